"""Automations the tests run in real workers (named in GARRISON_AUTOMATIONS)."""

from __future__ import annotations

import os
import time
from typing import Any

from garrison.automations.machine import Machine, Transition

counter = Machine("counter", preferences={"step": 1}, tenant_preferences={"acme": {"step": 10}})


@counter.reducer
def add(prefs: dict[str, Any], state: Any, data: dict[str, Any]) -> Any:
    """Counts, and records which (source, n) pairs were applied in which order."""
    state = state or {"count": 0, "applied": []}
    if data.get("boom"):
        raise ValueError(f"boom for {data.get('n')}")
    if os.environ.get("GARRISON_TEST_SLOW_REDUCER"):
        time.sleep(float(os.environ["GARRISON_TEST_SLOW_REDUCER"]))
    state["count"] += prefs["step"]
    state["applied"].append([data.get("source", ""), data.get("n", 0)])
    return state


@counter.reducer
def same(prefs: dict[str, Any], state: Any, data: dict[str, Any]) -> Any:
    return state


@counter.listener
def record(t: Transition) -> None:
    """Writes every transition it is handed to a file, so tests can read what listeners saw."""
    if os.environ.get("GARRISON_TEST_SLOW_LISTENER"):  # before it records: a kill now leaves no line
        time.sleep(float(os.environ["GARRISON_TEST_SLOW_LISTENER"]))
    blocker = t.data.get("blocker")
    if blocker and os.path.exists(blocker):
        raise RuntimeError(f"the mail server is down for version {t.version}")
    path = os.environ.get("GARRISON_TEST_LISTENER_LOG")
    if path:
        import json

        with open(path, "a") as fh:
            fh.write(json.dumps({"key": t.key, "version": t.version, "prev": t.prev, "current": t.current,
                                 "data": t.data, "idempotency_key": t.idempotency_key}) + "\n")
    if t.data.get("chain"):
        t.send("add", t.key + "-chained", {"source": "chain", "n": t.version})
