"""A machine whose reducer fails while a file exists: a bug that a later deploy fixes, for retry tests."""

from __future__ import annotations

import os
from typing import Any

from garrison.automations.machine import Machine

flaky = Machine("flaky")


@flaky.reducer
def charge(prefs: dict[str, Any], state: Any, data: dict[str, Any]) -> Any:
    """Raises while the file named by ``data["blocker"]`` exists; otherwise records the charge."""
    blocker = data.get("blocker")
    if blocker and os.path.exists(blocker):
        raise RuntimeError(f"payment provider down for {data.get('n')}")
    state = state or {"charged": []}
    state["charged"].append(data.get("n"))
    return state
