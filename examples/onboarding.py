"""The events seed's onboarding journey, run in this process on a simulated clock.

    python examples/onboarding.py

needs no worker and no server: it stores the events in ./.garrison (SQLite), drives the seed's timeline
on a :class:`~garrison.FrozenClock` (21 seconds of journey in well under one) and prints the run's log,
which is the seed's demo output line for line. The journey itself is ``garrison/demo/onboarding.py``
(``garrison demo`` runs it on a real worker, in real time); to run it in production, name
``garrison.demo.onboarding`` (or your copy of it) in ``GARRISON_AUTOMATIONS`` and start ``garrison worker``.
"""

from __future__ import annotations

import uuid

from garrison import FrozenClock, Garrison, NullPublisher, Settings
from garrison.demo.onboarding import TIMELINE, onboarding

__all__ = ["TIMELINE", "main", "onboarding", "simulate"]


def simulate(client: Garrison, key: str = "user1") -> list[str]:
    """Drive the timeline on the client's :class:`FrozenClock`, applying everything in this process,
    and return the run's log. What a worker does with real time, compressed into no time at all."""
    clock = client.clock
    assert isinstance(clock, FrozenClock), "simulate needs a client on a FrozenClock"
    start = clock.now()
    step = 0.25
    t = 0.0
    pending = list(TIMELINE)
    while pending or t < TIMELINE[-1][0] + 1:
        while pending and pending[0][0] <= t:
            _, name, data = pending.pop(0)
            client.ingest(name, key, data)
        client.run_pending()
        t += step
        clock.advance(seconds=(start.timestamp() + t) - clock.now().timestamp())
    [run] = client.runs(automation="onboarding", key=key)
    return [line["text"] for line in run.log]


def main() -> None:
    # A tenant of its own per run, so running the script twice shows one run each time.
    settings = Settings.from_env(tenant=f"example-{uuid.uuid4().hex[:8]}")
    client = Garrison(settings, automations=[onboarding], publisher=NullPublisher(), clock=FrozenClock())
    client.init_db()
    for line in simulate(client):
        print(line)
    [run] = client.runs(automation="onboarding", key="user1")
    print(f"{run.label}: {run.status}, result {run.result}")


if __name__ == "__main__":
    main()
