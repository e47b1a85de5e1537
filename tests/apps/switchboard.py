"""A machine that takes what the ``light`` statechart emits on entry (tests/apps/statecharts.py), for the
test that an actor's save publishes an event emitted while it applied."""

from __future__ import annotations

from typing import Any

from garrison.automations.machine import Machine

switchboard = Machine("switchboard", on={"light.switched_off": "switched_off"})


@switchboard.reducer
def switched_off(prefs: dict[str, Any], state: Any, data: dict[str, Any]) -> Any:
    state = state or {"off": 0}
    state["off"] += 1
    return state
