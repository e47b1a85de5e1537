"""Order fulfilment as a statechart, held as an actor by a web handler and driven by events.

    python examples/order_fulfilment.py

runs with nothing else running (SQLite under ./.garrison, no worker: ``client.run_pending()``, and a
frozen clock moved 31 minutes ahead so the unpaid order's timeout fires at once). In production, name
this module in GARRISON_AUTOMATIONS, run ``garrison worker`` and ``garrison beat``, and the payment
timeout is a durable timer that survives worker restarts.

    cart --checkout [has items]--> awaiting_payment --paid [enough]--> fulfilling --(both done)--> shipped
                                   awaiting_payment --after 30m-----> cancelled
    fulfilling is parallel:  packing:   picking --packed--> packed
                             invoicing: drafting --invoiced--> sent

Entering ``shipped`` or ``cancelled`` emits an event (once per entry, never again on reload or replay).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from garrison import FrozenClock, Garrison, Message, NullPublisher, Settings, Statechart, hold_actor


def add_item(context: dict[str, Any], event: Message) -> None:
    context["items"].append(event.data["sku"])
    context["total"] += event.data["price"]


def has_items(context: dict[str, Any], event: Message) -> bool:
    return bool(context["items"])


def paid_enough(context: dict[str, Any], event: Message) -> bool:
    return bool(event.data.get("amount", 0) >= context["total"])


def record_payment(context: dict[str, Any], event: Message) -> None:
    context["paid"] = event.data["amount"]


orders = Statechart(
    "orders",
    version=1,
    initial="cart",
    context={"items": [], "total": 0, "paid": 0},
    states={
        "cart": {
            "on": {
                "order.item_added": {"actions": add_item},
                "order.checkout": {"target": "awaiting_payment", "guard": has_items},
            },
        },
        "awaiting_payment": {
            "on": {"order.paid": {"target": "fulfilling", "guard": paid_enough, "actions": record_payment}},
            "after": {"30m": "cancelled"},
        },
        "fulfilling": {
            "type": "parallel",
            "states": {
                "packing": {
                    "initial": "picking",
                    "states": {"picking": {"on": {"order.packed": "packed"}}, "packed": {"type": "final"}},
                },
                "invoicing": {
                    "initial": "drafting",
                    "states": {"drafting": {"on": {"order.invoiced": "sent"}}, "sent": {"type": "final"}},
                },
            },
            "on_done": "shipped",
        },
        "shipped": {"type": "final", "emit": {"name": "order.shipped", "data": lambda c, e: {"total": c["total"]}}},
        "cancelled": {"type": "final", "emit": "order.cancelled"},
    },
)


def checkout(client: Garrison, order_id: str, basket: list[tuple[str, int]]) -> Any:
    """What a web handler does: hold the order, send events, and have it saved when the block succeeds."""
    with hold_actor(client, "orders", order_id, lock="read-write") as order:
        for sku, price in basket:
            order.send("order.item_added", {"sku": sku, "price": price})
        step = order.send("order.checkout")
        if not step.handled:
            raise ValueError(f"order {order_id} cannot be checked out: {step.refused}")
    return order.value


def main(client: Garrison | None = None) -> dict[str, Any]:
    if client is None:
        clock = FrozenClock(datetime.now(UTC))
        client = Garrison(Settings.from_env(), publisher=NullPublisher(), clock=clock)
        client.init_db()
    client.register(orders)
    run = uuid.uuid4().hex[:6]
    paid, unpaid = f"o-{run}-1", f"o-{run}-2"

    print(paid, "after checkout:", checkout(client, paid, [("kiwi", 4), ("melon", 9)]))
    print(unpaid, "after checkout:", checkout(client, unpaid, [("apple", 3)]))

    # The payment provider's webhook, the warehouse and the billing system send plain events.
    orders.send("order.paid", paid, {"amount": 13}, client=client)
    client.ingest("order.packed", paid)
    client.ingest("order.invoiced", paid)
    client.run_pending()

    # Nobody pays for the second order: 31 minutes later its timer has moved it to cancelled.
    if isinstance(client.clock, FrozenClock):
        client.clock.advance(minutes=31)
    client.run_pending()

    states = {key: client.state("orders", key) for key in (paid, unpaid)}
    for key, snapshot in states.items():
        print(key, snapshot["value"], snapshot["status"], snapshot["context"])
    return {"keys": (paid, unpaid), "states": states}


if __name__ == "__main__":
    main()
