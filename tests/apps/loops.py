"""An update loop (go-state style) for the tests: a cart that asks a command for prices."""

from __future__ import annotations

import os
from typing import Any

from garrison.automations.loop import CommandContext, Msg, UpdateLoop
from garrison.core.contract import Message


def init() -> tuple[Any, Any]:
    return {"items": [], "total": 0, "inits": 1}, None


def update(model: Any, msg: Message) -> tuple[Any, Any]:
    if msg.name == "cart/add":
        model["items"].append(msg.data["sku"])
        return model, [cart.cmd("price", msg.data["sku"]), None]
    if msg.name == "priced":
        model["total"] += msg.data["price"]
        return model, None
    if msg.name == "explode":
        raise RuntimeError("update refused")
    return model, None


def view(model: Any) -> Any:
    return f"{len(model['items'])} items, total {model['total']}"


cart = UpdateLoop("cart", init=init, update=update, view=view, on=["cart/*"])


@cart.command
def price(ctx: CommandContext, sku: str) -> Any:
    path = os.environ.get("GARRISON_TEST_COMMAND_LOG")
    if path:
        with open(path, "a") as fh:
            fh.write(f"{ctx.key}:{sku}\n")
    return [Msg("priced", {"sku": sku, "price": len(sku)}), None]


def poll_init() -> tuple[Any, Any]:
    """A loop that starts itself: its init asks for the first page at once (go-state's Run)."""
    return {"pages": [], "inits": 1}, poller.cmd("fetch", 1)


def poll_update(model: Any, msg: Message) -> tuple[Any, Any]:
    if msg.name == "fetched":
        model["pages"].append(msg.data["page"])
        if msg.data["page"] < 3:
            return model, poller.cmd("fetch", msg.data["page"] + 1)
    return model, None


poller = UpdateLoop("poller", init=poll_init, update=poll_update, on=["poll/*"])


@poller.command
def fetch(ctx: CommandContext, page: int) -> Any:
    path = os.environ.get("GARRISON_TEST_COMMAND_LOG")
    if path:
        with open(path, "a") as fh:
            fh.write(f"{ctx.key}:fetch:{page}\n")
    return Msg("fetched", {"page": page})
