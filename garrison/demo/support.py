"""The support-inquiry machine from casern's README, corrected.

casern's ``checkTimeout`` marks a timeout when ``state.when + timeoutAfter > now``, which is true right
after the inquiry; here it is ``now - when > timeoutAfter``. And casern's ``initialInquiry`` reads the
clock (``Date.now()``); here ``when`` comes in the message data, so every reducer is pure and replaying
the log gives the same states.

The ``sendEmail`` service "sends" by appending a JSON line to ``mailbox.jsonl`` in the data directory,
once per idempotency key, however often the listener's effect is delivered.
"""

from __future__ import annotations

import fcntl
import json
import time
from pathlib import Path
from typing import Any

from garrison.automations.machine import Machine, Transition
from garrison.client import default_client
from garrison.config import Settings

MAILBOX = "mailbox.jsonl"


def mailbox_path(settings: Settings) -> Path:
    return settings.data_dir / MAILBOX


def send_email(to: str, message: str, *, idempotency_key: str) -> bool:
    """Append the email to the mailbox unless this idempotency key was sent already. True if sent now."""
    path = mailbox_path(default_client().settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        if any(json.loads(line)["idempotency_key"] == idempotency_key for line in fh if line.strip()):
            return False
        fh.write(json.dumps({"to": to, "message": message, "idempotency_key": idempotency_key, "at": time.time()}))
        fh.write("\n")
        return True


def read_mailbox(settings: Settings) -> list[dict[str, Any]]:
    path = mailbox_path(settings)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


support = Machine(
    "support",
    preferences={"supportPerson": "bob@help.com", "timeoutAfter": 2.5},
    services={"sendEmail": send_email},
)


@support.reducer
def initialInquiry(prefs: dict[str, Any], state: Any, data: dict[str, Any]) -> Any:
    return {"status": "inquired", "name": data["name"], "when": data["when"]}


@support.reducer
def respond(prefs: dict[str, Any], state: Any, data: dict[str, Any]) -> Any:
    if state is None or state["status"] != "inquired":
        return state
    return {**state, "status": "responded", "respondedAt": data["when"]}


@support.reducer
def checkTimeout(prefs: dict[str, Any], state: Any, data: dict[str, Any]) -> Any:
    if "now" not in data or state is None:
        return state  # the time must be passed in: a reducer never reads the clock
    if state["status"] != "inquired":
        return state
    if data["now"] - state["when"] > prefs["timeoutAfter"]:
        state["status"] = "timeout"
    return state


@support.listener
def emailSupport(t: Transition) -> None:
    """Runs once per stored transition, with that transition's own prev and current states."""
    if t.current["status"] == "timeout" and (t.prev or {}).get("status") != "timeout":
        t.services["sendEmail"](
            t.preferences["supportPerson"],
            f"The person {t.current['name']} has not responded",
            idempotency_key=t.idempotency_key,
        )
