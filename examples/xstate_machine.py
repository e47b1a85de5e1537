"""An XState machine, kept as JSON, run by garrison: ``Statechart.from_xstate``.

The configuration below is what ``createMachine({...})`` takes in xstate v5 (or what the Stately editor
exports): states, events, a guard and actions by name, a delayed transition in milliseconds. Its guard
and actions are Python functions of ``(context, event)``, given by name; the event's payload is
``event.data``. garrison runs it per key like any statechart: events ingested by name drive it, the
``after`` delay is a durable timer, and the snapshot is stored with each version.

Run it with nothing else running (SQLite under ./.garrison, no worker, a simulated clock)::

    python examples/xstate_machine.py

In production, put ``checkout`` in a module named by GARRISON_AUTOMATIONS and run ``garrison worker`` and
``garrison beat``.
"""

from __future__ import annotations

import json
from typing import Any

from garrison import FrozenClock, Garrison, Message, NullPublisher, Settings, Statechart

MACHINE = json.loads("""
{
  "id": "checkout",
  "initial": "cart",
  "context": {"items": [], "total": 0},
  "states": {
    "cart": {
      "on": {
        "ADD_ITEM": {"actions": {"type": "addItem"}},
        "CHECKOUT": {"target": "payment", "guard": "hasItems"}
      }
    },
    "payment": {
      "after": {"1800000": {"target": "expired"}},
      "on": {"PAY": [{"target": "paid", "guard": "paysTotal"}, {"actions": "recordShortfall"}]}
    },
    "paid": {"type": "final"},
    "expired": {"type": "final", "description": "30 minutes without payment"}
  }
}
""")


def add_item(context: dict[str, Any], event: Message) -> None:
    context["items"].append(event.data["sku"])
    context["total"] += event.data["price"]


def record_shortfall(context: dict[str, Any], event: Message) -> dict[str, Any]:
    return {**context, "short": context["total"] - event.data["amount"]}


checkout = Statechart.from_xstate(
    MACHINE,
    guards={
        "hasItems": lambda context, event: bool(context["items"]),
        "paysTotal": lambda context, event: event.data["amount"] >= context["total"],
    },
    actions={"addItem": add_item, "recordShortfall": record_shortfall},
)


def main(client: Garrison | None = None) -> dict[str, Any]:
    if client is None:
        client = Garrison(Settings.from_env(), publisher=NullPublisher(), clock=FrozenClock())
        client.init_db()
    client.register(checkout)
    for key in ("alice", "bob"):
        client.ingest("ADD_ITEM", key, {"sku": "kiwi", "price": 4})
        client.ingest("CHECKOUT", key)
    client.ingest("PAY", "alice", {"amount": 3})   # short: recorded, still in payment
    client.ingest("PAY", "alice", {"amount": 4})
    client.run_pending()
    clock = client.clock
    if isinstance(clock, FrozenClock):
        clock.advance(minutes=31)                   # bob never pays: his payment expires
        client.run_pending()
    states = {key: client.state("checkout", key) for key in ("alice", "bob")}
    for key, snapshot in states.items():
        print(f"{key}: {snapshot['value']} {snapshot['context']}")
    return {key: (s["value"], s["status"], s["context"]) for key, s in states.items()}


if __name__ == "__main__":
    main()
