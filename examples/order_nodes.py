"""Node state (Happen style): an order goes through four nodes that own their state and talk by events.

``orders`` reads the customer's address and the stock through views (other nodes' committed state),
``inventory`` reserves the stock, ``dashboard`` counts shipments, and ``trail`` subscribes to every event
(``**``) to show the causal chain: one correlation id, each event caused by the one before.

Run it with nothing else running (SQLite under ./.garrison, no worker: ``client.run_pending()``)::

    python examples/order_nodes.py

In production, put ``shop`` in a module named by GARRISON_AUTOMATIONS and run ``garrison worker``; the
handlers then run in the workers, and ``shop.broadcast`` / ``node.state.set`` work from any process.
"""

from __future__ import annotations

from typing import Any

from garrison import Garrison, NodeContext, NodeEvent, Nodes, NullPublisher, Settings, Views, configure

shop = Nodes("shop")
orders = shop.node("orders")
customers = shop.node("customers", initial={"c-1": {"name": "Ada", "address": "1 Quay St"}})
inventory = shop.node("inventory", initial={"kiwi": 5})
dashboard = shop.node("dashboard", initial={"shipped": 0, "last": None})
trail = shop.node("trail", initial={"events": []})


@orders.on("order.placed")
def place(event: NodeEvent, node: NodeContext) -> None:
    order = event.payload

    def add(state: Any, views: Views) -> Any:
        address = views["customers"].get(f"{order['customer']}.address")
        in_stock = (views["inventory"].get(order["sku"]) or 0) >= order["qty"]
        entry = {"sku": order["sku"], "qty": order["qty"], "customer": order["customer"], "address": address,
                 "status": "accepted" if in_stock else "waiting"}
        return {**state, order["id"]: entry}

    node.state.set(add)
    if node.state.get(f"{order['id']}.status") == "accepted":
        node.broadcast("order.accepted", {"id": order["id"], "sku": order["sku"], "qty": order["qty"]})


@inventory.on("order.accepted")
def reserve(event: NodeEvent, node: NodeContext) -> None:
    sku, qty = event.payload["sku"], event.payload["qty"]
    node.state.set(lambda stock: {**stock, sku: stock[sku] - qty})
    node.broadcast("stock.reserved", {"order": event.payload["id"]})


@orders.on("stock.reserved")
def ship(event: NodeEvent, node: NodeContext) -> None:
    order_id = event.payload["order"]
    node.state.set(lambda state: {**state, order_id: {**state[order_id], "status": "shipped"}})
    node.broadcast("order.shipped", {"id": order_id, "address": node.state.get(f"{order_id}.address")})


@dashboard.on("order.{shipped,cancelled}")
def count(event: NodeEvent, node: NodeContext) -> None:
    node.state.set(lambda state: {"shipped": state["shipped"] + 1, "last": event.payload["id"]})


@trail.on("**")
def remember(event: NodeEvent, node: NodeContext) -> None:
    step = {"type": event.type, "id": event.id, "causation_id": event.causation_id,
            "correlation_id": event.correlation_id, "sender": event.sender}
    node.state.set(lambda state: {"events": [*state["events"], step]})


def main(client: Garrison | None = None) -> dict[str, Any]:
    if client is None:
        client = Garrison(Settings.from_env(), publisher=NullPublisher())
        client.init_db()
        configure(client)  # handlers read views through the process's client
    client.register(shop)
    shop.broadcast("order.placed", {"id": "o-1", "sku": "kiwi", "qty": 2, "customer": "c-1"}, client=client)
    client.run_pending()
    placed = orders.state.get("o-1", client=client)
    print(f"o-1 {placed['status']} to {placed['address']}")
    print(f"inventory: {inventory.state.get(client=client)}  dashboard: {dashboard.state.get(client=client)}")
    chain = trail.state.get("events", client=client)
    print(f"trail (correlation {chain[0]['correlation_id'][:8]}):")
    for step in chain:
        cause = (step["causation_id"] or "-")[:8]
        print(f"  {step['type']:<15} id {step['id'][:8]}  caused by {cause:<8}  from {step['sender'] or 'outside'}")
    return {
        "orders": orders.state.get(client=client), "inventory": inventory.state.get(client=client),
        "dashboard": dashboard.state.get(client=client), "chain": chain,
    }


if __name__ == "__main__":
    main()
