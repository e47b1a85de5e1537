"""A machine that keeps the data of every event it takes in its state, for the hostile-input tests:
whatever ingest accepted must be applied by the engine without a failure."""

from __future__ import annotations

from typing import Any

from garrison.automations.machine import Machine

echo = Machine("echo", on={"app/echo": "keep"})


@echo.reducer
def keep(prefs: dict[str, Any], state: Any, data: dict[str, Any]) -> Any:
    state = state or {"n": 0}
    return {"n": state["n"] + 1, "last": data}
