"""A node system (Happen style) for the tests: an order flow two hops deep, pattern cases, and a counter
that handlers and outside ``set`` calls both increment."""

from __future__ import annotations

from typing import Any

from garrison.automations.nodes import NodeContext, NodeEvent, Nodes
from garrison.config import Settings

mesh = Nodes("mesh")
counter = mesh.node("counter", initial={"count": 0})
orders = mesh.node("orders", initial={"orders": {}, "seen": []})
billing = mesh.node("billing", initial={"invoices": [], "seen": []})
dashboard = mesh.node("dashboard", initial={"seen": []})
audit = mesh.node("audit", initial={"seen": []})
inventory = mesh.node("inventory", initial={"seen": []})


def seen(event: NodeEvent) -> dict[str, Any]:
    return {"type": event.type, "id": event.id, "causation_id": event.causation_id,
            "correlation_id": event.correlation_id, "sender": event.sender}


def record(event: NodeEvent, node: NodeContext) -> None:
    node.state.set(lambda s: {**s, "seen": [*s["seen"], seen(event)]})


@counter.on("count.bump")
def bump(event: NodeEvent, node: NodeContext) -> None:
    node.state.set(lambda s: {"count": s["count"] + 1})


@orders.on("order.*")
def keep_order(event: NodeEvent, node: NodeContext) -> None:
    record(event, node)
    if event.type == "order.created":
        order = event.payload
        node.state.set(lambda s: {**s, "orders": {**s["orders"], order["id"]: order}})
        node.send("billing", "invoice.requested", {"order": order["id"]})        # hop 1


@billing.on("invoice.requested")
def invoice(event: NodeEvent, node: NodeContext) -> None:
    record(event, node)
    order_id = event.payload["order"]
    amount = node.views["orders"].get(f"orders.{order_id}.amount")           # committed by hop 0
    node.state.set(lambda s: {**s, "invoices": [*s["invoices"], {"order": order_id, "amount": amount}]})
    node.broadcast("invoice.created", {"order": order_id, "amount": amount})  # hop 2


@dashboard.on("{order,invoice}.created")
def show(event: NodeEvent, node: NodeContext) -> None:
    record(event, node)


@dashboard.on("report")
def report(event: NodeEvent, node: NodeContext) -> None:
    """Views inside a worker: self and unknown nodes are None, others are committed state."""
    node.state.set(lambda s, views: {**s, "report": views.collect({
        "orders": "orders", "dashboard": None, "ghost": None, "billing": lambda b: len(b["invoices"]),
    })})


def big(event: NodeEvent) -> bool:
    return isinstance(event.payload, dict) and (event.payload.get("amount") or 0) >= 100


@audit.on(big)
def audit_big(event: NodeEvent, node: NodeContext) -> None:
    record(event, node)


@inventory.on("stock.**")
def stock(event: NodeEvent, node: NodeContext) -> None:
    record(event, node)
    if event.payload.get("explode"):
        raise RuntimeError("inventory refused")
    if "replace" in event.payload:
        node.state.set(event.payload["replace"])  # Happen's set({...}): the dict is the whole new state


def increment(settings: Settings, n: int, start: Any, pause: float = 0.0) -> None:
    """A process that sets the counter ``n`` times from outside the worker (started by the tests with
    multiprocessing's spawn; kept here, away from pytest, so each child starts quickly). ``pause``
    spreads the sets over time, so work elsewhere (a worker's) lands between them."""
    import time

    from garrison.client import Garrison
    from garrison.core.publisher import NullPublisher

    client = Garrison(settings, publisher=NullPublisher())
    start.wait()
    try:
        for _ in range(n):
            counter.state.set(lambda s: {**s, "count": s["count"] + 1}, client=client)
            if pause:
                time.sleep(pause)
    finally:
        client.db.dispose()
