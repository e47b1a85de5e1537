"""casern's support-inquiry example as a garrison reducer machine: define it, send to it, pulse it.

    python examples/support_inquiry.py

runs without any worker or server: it stores the events in ./.garrison (SQLite) and applies them in this
process. In production the same machine runs on workers: name this module in GARRISON_AUTOMATIONS, start
`garrison worker` and `garrison beat` (which runs the checkTimeout pulse defined below, fleet-wide), and
drop main()'s simulated pulses and its inline `client.run_pending()`.

Two things differ from casern's README, on purpose:
- casern marks a timeout when `state.when + timeoutAfter > now`, which is backwards; this says
  `now - when > timeoutAfter`.
- casern's initialInquiry reads the clock (`Date.now()`); here `when` comes in the data, like `now` does
  for checkTimeout. Reducers stay pure, so replaying the log gives the same states, and pulses can be
  simulated: the pulses below cover ten seconds without waiting for them.
"""

from __future__ import annotations

import time
from typing import Any

from garrison import Garrison, Machine, NullPublisher, Settings, Transition

OUTBOX: list[tuple[str, str]] = []


def send_email(address: str, message: str) -> None:
    """Stands in for your email sender."""
    OUTBOX.append((address, message))
    print(f"email to {address}: {message}")


inquiry = Machine(
    "inquiry",
    preferences={"supportPerson": "bob@help.com", "timeoutAfter": 10.0},
    services={"sendEmail": send_email},
)


@inquiry.reducer
def initialInquiry(prefs: dict[str, Any], state: Any, data: dict[str, Any]) -> Any:
    return {"status": "inquired", "name": data["name"], "when": data["when"]}


@inquiry.reducer
def respond(prefs: dict[str, Any], state: Any, data: dict[str, Any]) -> Any:
    if state is None or state["status"] != "inquired":
        return state
    state["status"] = "responded"
    return state


# On a fleet, beat pulses checkTimeout to every open inquiry each second (`garrison beat` + a worker, with
# this module in GARRISON_AUTOMATIONS). main() below simulates those pulses, so it needs neither.
@inquiry.pulse("every 1s", where={"status": ["inquired"]})
def checkTimeout(prefs: dict[str, Any], state: Any, data: dict[str, Any]) -> Any:
    if "now" not in data or state is None or state["status"] != "inquired":
        return state
    if data["now"] - state["when"] > prefs["timeoutAfter"]:
        state["status"] = "timeout"
    return state


@inquiry.listener
def emailSupport(t: Transition) -> None:
    """Runs after every stored transition, with exactly that transition's prev and current state."""
    if t.current["status"] == "timeout":
        t.services["sendEmail"](t.preferences["supportPerson"], f"The person {t.current['name']} has not responded")


def main(client: Garrison | None = None, *, start: float | None = None) -> dict[str, Any]:
    """Two inquiries, one answered; pulse every (simulated) second for 12 s. Returns states and emails."""
    if client is None:
        client = Garrison(Settings.from_env(), publisher=NullPublisher())
        client.init_db()
    client.register(inquiry)
    start = time.time() if start is None else start
    sent = len(OUTBOX)
    people = {"12344": "ryan", "12345": "ana"}

    for key, name in people.items():
        inquiry.send("initialInquiry", key, {"name": name, "when": start}, client=client)
    inquiry.send("respond", "12345", {}, client=client)
    for second in range(1, 13):
        for key in people:
            inquiry.send("checkTimeout", key, {"now": start + second}, client=client)
    client.run_pending()

    states = {key: client.state("inquiry", key) for key in people}
    for key, state in states.items():
        print(f"{key}: {state}")
    return {"states": states, "emails": OUTBOX[sent:]}


if __name__ == "__main__":
    main()
