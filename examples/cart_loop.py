"""An update loop (go-state style): a shopping cart whose prices come from a command.

``init`` runs once per cart; ``update`` runs for each message in order; the ``price`` command is a side
effect that runs after commit, and the ``priced`` message it returns is fed back into the same cart.
``None`` messages and commands are ignored, and a failing ``update`` stores no snapshot.

Run it with nothing else running (SQLite under ./.garrison, no worker: ``client.run_pending()``)::

    python examples/cart_loop.py

In production, put ``cart`` in a module named by GARRISON_AUTOMATIONS and run ``garrison worker``.
"""

from __future__ import annotations

from typing import Any

from garrison import CommandContext, Garrison, Message, Msg, NullPublisher, Settings, UpdateLoop

PRICES = {"apple": 3, "kiwi": 4, "melon": 9}


def init() -> tuple[Any, Any]:
    return {"items": [], "total": 0}, None


def update(model: Any, msg: Message) -> tuple[Any, Any]:
    if msg.name == "cart/add":
        model["items"].append(msg.data["sku"])
        return model, [cart.cmd("price", msg.data["sku"])]
    if msg.name == "priced":
        model["total"] += msg.data["price"]
    return model, None


def view(model: Any) -> str:
    return f"{len(model['items'])} items, total {model['total']}"


cart = UpdateLoop("cart", init=init, update=update, view=view, on=["cart/*"])


@cart.command
def price(ctx: CommandContext, sku: str) -> Msg | None:
    """A side effect (a price service, say). Unknown items give no message, which the loop ignores."""
    if sku not in PRICES:
        return None
    return Msg("priced", {"sku": sku, "price": PRICES[sku]})


def main(client: Garrison | None = None) -> str:
    if client is None:
        client = Garrison(Settings.from_env(), publisher=NullPublisher())
        client.init_db()
    client.register(cart)
    for sku in ["apple", "kiwi", "durian", "melon"]:
        client.ingest("cart/add", "user-1", {"sku": sku})
    client.run_pending()
    shown = str(client.view("cart", "user-1"))
    print(shown)
    report = client.replay("cart", "user-1")
    print(f"replay: {report.entities} entity, {report.events} messages, ok={report.ok}")
    return shown


if __name__ == "__main__":
    main()
