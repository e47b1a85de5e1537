"""The automation the worker runs (GARRISON_AUTOMATIONS): per address, its subscriptions."""

from __future__ import annotations

from typing import Any

from garrison import Machine

subscribers = Machine("subscribers", on={"app/newsletter.subscribed": "subscribed"})


@subscribers.reducer
def subscribed(prefs: dict[str, Any], state: Any, data: dict[str, Any]) -> Any:
    state = state or {"count": 0, "lists": []}
    lists = state["lists"] if data["list"] in state["lists"] else [*state["lists"], data["list"]]
    return {"count": state["count"] + 1, "lists": lists}
