"""Journeys the tests run in real workers (named in GARRISON_AUTOMATIONS) and offline.

Steps append what they did to the file named by GARRISON_TEST_STEP_LOG, so a test reads what really
ran; GARRISON_TEST_STEP_ORDER changes the order of the ``steps`` journey's steps, which is how a test
deploys "new code" under a live run.
"""

from __future__ import annotations

import json
import os
from typing import Any

from garrison.automations.journeys.journey import JourneyContext, journey
from garrison.core.contract import Message


def record_step(name: str, n: Any, idempotency_key: str | None = None) -> dict[str, Any]:
    path = os.environ.get("GARRISON_TEST_STEP_LOG")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps({"step": name, "n": n, "idempotency_key": idempotency_key}) + "\n")
    return {"step": name, "n": n}


def failing_step(times: int, idempotency_key: str) -> str:
    """Fails the first ``times`` attempts of this step (counted in the step log), then succeeds."""
    path = os.environ["GARRISON_TEST_STEP_LOG"]
    with open(path, "a") as fh:
        fh.write(json.dumps({"step": "flaky", "idempotency_key": idempotency_key}) + "\n")
    with open(path) as fh:
        attempts = sum(1 for line in fh if json.loads(line)["idempotency_key"] == idempotency_key)
    if attempts <= times:
        raise ConnectionError(f"attempt {attempts} failed")
    return f"ok after {attempts}"


@journey("waiter", on="test/start")
def waiter(event: Message, ctx: JourneyContext) -> Any:
    """Waits for ``test/confirmed`` with the start event's id; the timeout comes in the event."""
    got = ctx.wait_for("test/confirmed", match={"id": event.data["id"]}, timeout=event.data.get("timeout", "1s"))
    return {"confirmed": None if got is None else [e.data for e in got]}


@journey("sleeper", on="test/nap")
def sleeper(event: Message, ctx: JourneyContext) -> Any:
    """Sleeps, then reports when it woke up."""
    before = ctx.now()
    ctx.sleep(event.data.get("for", "500ms"))
    after = ctx.now()
    ctx.ingest("test/woke", {"n": event.data.get("n")})
    return {"slept": (after - before).total_seconds(), "n": event.data.get("n")}


@journey("stepper", on="test/steps")
def stepper(event: Message, ctx: JourneyContext) -> Any:
    """Two steps with a sleep between them (the run is live there); their order comes from the env."""
    order = os.environ.get("GARRISON_TEST_STEP_ORDER", "ab")
    first = ctx.step(f"step-{order[0]}", record_step, order[0], event.data.get("n"))
    ctx.sleep(event.data.get("between", "1s"))
    second = ctx.step(f"step-{order[1]}", record_step, order[1], event.data.get("n"))
    return [first, second]


@journey("flaky", on="test/flaky")
def flaky(event: Message, ctx: JourneyContext) -> Any:
    """A step that fails ``fail`` times before it succeeds."""
    return ctx.step("flaky", failing_step, event.data.get("fail", 1))


@journey("raiser", on="test/raise", cancel_on="test/stop")
def raiser(event: Message, ctx: JourneyContext) -> Any:
    """Raises until GARRISON_TEST_FIXED is set: a bug, then its fix deployed."""
    ctx.wait_for("test/go", timeout="200ms")
    if not os.environ.get("GARRISON_TEST_FIXED"):
        raise RuntimeError("not fixed yet")
    return "fixed"


@journey("queued", on="test/job", concurrency="queue")
def queued(event: Message, ctx: JourneyContext) -> Any:
    ctx.wait_for("test/done", match={"job": event.data["job"]})
    return event.data["job"]


@journey("parallel", on="test/par", concurrency="parallel")
def parallel(event: Message, ctx: JourneyContext) -> Any:
    ctx.wait_for("test/done", match={"job": event.data["job"]})
    return event.data["job"]


@journey("alarm", on="test/alarm")
def alarm(event: Message, ctx: JourneyContext) -> Any:
    """Sleeps until the time in the event (many runs can share one due second)."""
    from datetime import datetime

    ctx.sleep_until(datetime.fromisoformat(event.data["at"]))
    return event.data.get("n")


@journey("lookback", on="test/look")
def lookback(event: Message, ctx: JourneyContext) -> Any:
    """Sleeps first, then waits twice for the same event: the look-back rule in one journey."""
    ctx.sleep(event.data.get("for", "1s"))
    first = ctx.wait_for("test/ping", timeout="5s")
    second = ctx.wait_for("test/ping", timeout="5s")
    return [None if first is None else [e.data["n"] for e in first],
            None if second is None else [e.data["n"] for e in second]]
