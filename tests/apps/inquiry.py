"""casern's support-inquiry machine with its checkTimeout pulse defined in code, for the pulse tests on real
workers and beats. The emailSupport listener records each email in GARRISON_TEST_MAILBOX (a file)."""

from __future__ import annotations

import json
import os
from typing import Any

from garrison.automations.machine import Machine, Transition

inquiry = Machine("inquiry", preferences={"supportPerson": "bob@help.com", "timeoutAfter": 2.0})


@inquiry.reducer
def initialInquiry(prefs: dict[str, Any], state: Any, data: dict[str, Any]) -> Any:
    return {"status": "inquired", "name": data["name"], "when": data["when"]}


@inquiry.reducer
def respond(prefs: dict[str, Any], state: Any, data: dict[str, Any]) -> Any:
    return {**state, "status": "responded"} if state and state["status"] == "inquired" else state


@inquiry.pulse("every 1s", where={"status": ["inquired"]})
def checkTimeout(prefs: dict[str, Any], state: Any, data: dict[str, Any]) -> Any:
    if state is None or state["status"] != "inquired":
        return state
    if data["now"] - state["when"] > prefs["timeoutAfter"]:
        return {**state, "status": "timeout"}
    return state


@inquiry.listener
def emailSupport(t: Transition) -> None:
    if t.current and t.current["status"] == "timeout" and (t.prev or {}).get("status") != "timeout":
        path = os.environ.get("GARRISON_TEST_MAILBOX")
        if path:
            with open(path, "a") as fh:
                fh.write(json.dumps({"to": t.preferences["supportPerson"], "key": t.key,
                                     "text": f"The person {t.current['name']} has not responded",
                                     "idempotency_key": t.idempotency_key}) + "\n")
