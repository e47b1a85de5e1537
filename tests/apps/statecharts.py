"""Statecharts the tests run in real workers (named in GARRISON_AUTOMATIONS) and offline.

Run as a module (``python -m tests.apps.statecharts hold AUTOMATION KEY TTL``) it loads an actor in
read-write mode, prints ``held <owner>`` and sleeps until it is killed: the SIGKILLed holder.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from garrison.automations.statecharts.chart import Statechart
from garrison.core.contract import Message


def count_cycle(context: dict[str, Any], event: Message) -> None:
    context["cycles"] += 1


def note(context: dict[str, Any], event: Message) -> None:
    context["log"].append(event.name)


# A traffic light: yellow turns red by itself after two seconds (a durable timer), unless told earlier.
light = Statechart(
    "light",
    version=1,
    initial="green",
    context={"cycles": 0, "log": []},
    states={
        "green": {"on": {"light.next": "yellow"}},
        "yellow": {"after": {"2s": {"target": "red", "actions": note}}, "on": {"light.next": "red"}},
        "red": {"on": {"light.next": "green"}, "exit": count_cycle},
        "off": {"type": "final", "emit": "light.switched_off"},
    },
    on={"light.off": "off"},
)


def bump(context: dict[str, Any], event: Message) -> None:
    if context["armed"]:
        raise RuntimeError("tally is armed: a tick now explodes")
    context["count"] += 1
    context["seen"].append(event.data.get("n"))


def arm(context: dict[str, Any], event: Message) -> None:
    context["armed"] = True


def below_limit(context: dict[str, Any], event: Message) -> bool:
    return bool(context["count"] < context["limit"])


# A counter: every tick is counted (and remembered), up to a limit; "arm" makes the next tick fail.
tally = Statechart(
    "tally",
    version=1,
    initial="counting",
    context={"count": 0, "seen": [], "armed": False, "limit": 1000},
    states={
        "counting": {
            "on": {
                "tick": {"actions": "bump", "guard": "below_limit"},
                "arm": {"actions": arm},
                "close": "closed",
            },
        },
        "closed": {"type": "final"},
    },
    guards={"below_limit": below_limit},
    actions={"bump": bump},
)


def _hold(automation: str, key: str, ttl: float) -> None:
    from garrison.automations.statecharts.actors import load_actor
    from garrison.client import Garrison
    from garrison.core.publisher import NullPublisher

    client = Garrison(publisher=NullPublisher())
    actor = load_actor(client, automation, key, lock="read-write", lease_ttl=ttl)
    print(f"held {actor.owner}", flush=True)
    while True:
        time.sleep(60)


if __name__ == "__main__" and sys.argv[1:2] == ["hold"]:
    _hold(sys.argv[2], sys.argv[3], float(sys.argv[4]))
