"""A machine with no listener: counts the messages applied to each key (pulse tests at scale)."""

from __future__ import annotations

from typing import Any

from garrison.automations.machine import Machine

tally = Machine("tally")


@tally.reducer
def add(prefs: dict[str, Any], state: Any, data: dict[str, Any]) -> Any:
    return {"count": (state or {}).get("count", 0) + 1}
