"""Durable timers on real workers in real time (guarantee 5), on both backends.

Each test kills, stops, duplicates or starves something and then checks the one thing that matters:
every timer's message was applied exactly once. "Applied" is read from what the engine committed: the
journey's state versions (one per message applied) and the ``garrison/timer`` events in the log.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from garrison.client import Garrison
from garrison.config import Settings
from garrison.models import EVENTS, RUNS, TIMERS, VERSIONS
from garrison.tasks.publisher import CeleryPublisher
from tests.conftest import wait_until
from tests.harness import WorkerProcess

JOURNEYS = ("tests.apps.journeys",)
Worker = Callable[..., WorkerProcess]


def status(client: Garrison, automation: str, key: str) -> str | None:
    runs = client.runs(automation=automation, key=key)
    return runs[0].status if runs else None


def timer_messages_applied(client: Garrison, automation: str) -> dict[str, int]:
    """Per key: how many ``garrison/timer`` messages the engine applied to the journey (state versions)."""
    with client.db.session() as s:
        rows = s.execute(
            select(VERSIONS.c.key, func.count())
            .where(VERSIONS.c.tenant == client.settings.tenant, VERSIONS.c.automation == automation,
                   VERSIONS.c.message == "garrison/timer")
            .group_by(VERSIONS.c.key)
        ).all()
    return {key: n for key, n in rows}


def timer_events(client: Garrison) -> int:
    with client.db.session() as s:
        return int(s.execute(
            select(func.count()).where(EVENTS.c.tenant == client.settings.tenant, EVENTS.c.name == "garrison/timer")
        ).scalar_one())


def analyze(client: Garrison) -> None:
    """The test server runs PostgreSQL with autovacuum off: refresh the statistics a production server's
    autoanalyze would have after a bulk load, or the planner treats 10,000-row tables as empty."""
    if client.db.dialect == "postgresql":
        from sqlalchemy import text

        with client.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE"))


def flush_broker(settings: Settings) -> None:
    """Lose every message the broker holds: FLUSHDB on Redis, delete the files of the filesystem transport."""
    if settings.broker_url.startswith("redis"):
        import redis

        redis.Redis.from_url(settings.broker_url).flushdb()
    else:
        for path in (settings.broker_folder / "data").glob("*"):
            path.unlink(missing_ok=True)


def test_waits_wake_early_time_out_and_sleeps_resume_on_a_real_worker(
    settings_for: Callable[..., Settings], backend: str, worker: Worker
) -> None:
    settings = settings_for(backend, automations=JOURNEYS)
    client = Garrison(settings)
    worker(settings, beat=True)
    client.ingest("test/start", "early", {"id": 1, "timeout": "1h"})
    client.ingest("test/start", "late", {"id": 2, "timeout": "1s"})
    client.ingest("test/nap", "nap", {"for": "1s", "n": 3})
    wait_until(lambda: status(client, "waiter", "early") == "waiting", what="the early run to wait")
    client.ingest("test/confirmed", "early", {"id": 1})
    # An hour-long wait answered by its event: this only finishes if the event woke the run.
    wait_until(lambda: status(client, "waiter", "early") == "completed", timeout=30, what="early wake")
    wait_until(lambda: status(client, "waiter", "late") == "completed", timeout=30, what="the timeout")
    wait_until(lambda: status(client, "sleeper", "nap") == "completed", timeout=30, what="the sleep")
    results = {r.key: r.result for r in client.runs()}
    assert results["early"] == {"confirmed": [{"id": 1}]}
    assert results["late"] == {"confirmed": None}
    assert results["nap"]["n"] == 3 and results["nap"]["slept"] >= 1.0
    assert timer_messages_applied(client, "waiter") == {"late": 1}
    assert timer_messages_applied(client, "sleeper") == {"nap": 1}
    [early_timer] = client.run(client.runs(automation="waiter", key="early")[0].id).timers
    assert early_timer.status == "cancelled"


def test_a_timer_survives_its_worker_sigkilled_and_the_broker_flushed(
    settings_for: Callable[..., Settings], backend: str, worker: Worker
) -> None:
    settings = settings_for(backend, automations=JOURNEYS)
    client = Garrison(settings)
    doomed = worker(settings)  # no beat: only this worker holds the ETA task
    for n in range(5):
        client.ingest("test/nap", f"k{n}", {"for": "2s", "n": n})
    wait_until(lambda: len(client.runs(status="sleeping")) == 5, what="five sleeping runs")
    doomed.kill()
    flush_broker(settings)  # whatever the dead worker left in the broker is gone too
    worker(settings, beat=True)  # its relay sweeps the overdue timers
    wait_until(lambda: len(client.runs(status="completed")) == 5, timeout=60, what="all five runs to finish")
    assert timer_messages_applied(client, "sleeper") == {f"k{n}": 1 for n in range(5)}
    assert timer_events(client) == 5


def test_a_timer_due_while_no_worker_runs_fires_once_when_one_comes_back(
    settings_for: Callable[..., Settings], backend: str, worker: Worker
) -> None:
    settings = settings_for(backend, automations=JOURNEYS)
    client = Garrison(settings)
    first = worker(settings)
    client.ingest("test/nap", "k", {"for": "1s"})
    wait_until(lambda: status(client, "sleeper", "k") == "sleeping", what="the run to sleep")
    if backend == "postgres":
        first.stop()  # a warm shutdown: Redis gets the ETA task back, unacknowledged
    else:
        first.kill()  # the filesystem transport's warm shutdown outlasts the timer; its message is gone
    due = client.run(client.runs()[0].id).timers[0].due_at
    wait_until(lambda: datetime.now(UTC) > due + timedelta(seconds=1), what="the timer to be overdue")
    assert status(client, "sleeper", "k") == "sleeping"
    worker(settings, beat=True)
    wait_until(lambda: status(client, "sleeper", "k") == "completed", timeout=60, what="the run to finish")
    assert timer_messages_applied(client, "sleeper") == {"k": 1}
    assert timer_events(client) == 1


def test_a_timer_eta_message_delivered_three_times_fires_once(
    settings_for: Callable[..., Settings], backend: str, worker: Worker
) -> None:
    settings = settings_for(backend, automations=JOURNEYS)
    client = Garrison(settings)
    w = worker(settings)
    client.ingest("test/nap", "k", {"for": "2s"})
    wait_until(lambda: status(client, "sleeper", "k") == "sleeping", what="the run to sleep")
    due = client.run(client.runs()[0].id).timers[0].due_at
    publisher = CeleryPublisher(settings)
    for _ in range(2):
        publisher.publish_timers(settings.tenant, [due])  # two more copies of the timer's message
    wait_until(lambda: status(client, "sleeper", "k") == "completed", timeout=30, what="the run to finish")
    wait_until(lambda: w.output.count("Task garrison.timers[") >= 6, timeout=30,
               what="all three timer messages to be received and run")
    assert timer_messages_applied(client, "sleeper") == {"k": 1}
    assert timer_events(client) == 1


def test_a_timer_beyond_the_horizon_stays_in_sql_until_the_relay_promotes_it(
    settings_for: Callable[..., Settings], backend: str, worker: Worker
) -> None:
    settings = settings_for(backend, automations=JOURNEYS, timer_horizon=2.0)
    client = Garrison(settings)
    worker(settings, beat=True)
    client.ingest("test/nap", "k", {"for": "5s"})
    wait_until(lambda: status(client, "sleeper", "k") == "sleeping", what="the run to sleep")
    with client.db.session() as s:
        published = s.execute(select(TIMERS.c.published_at).where(TIMERS.c.tenant == settings.tenant)).scalar_one()
    assert published is None  # 5 s out, horizon 2 s: no ETA task yet, no worker memory held
    wait_until(lambda: status(client, "sleeper", "k") == "completed", timeout=30, what="the run to finish")
    with client.db.session() as s:
        row = s.execute(select(TIMERS.c.published_at, TIMERS.c.due_at, TIMERS.c.fired_at)
                        .where(TIMERS.c.tenant == settings.tenant)).one()
    assert row.published_at is not None and row.published_at <= row.due_at <= row.fired_at
    assert timer_messages_applied(client, "sleeper") == {"k": 1}


def test_ten_thousand_timers_due_in_the_same_second_all_fire_and_none_twice(
    settings_for: Callable[..., Settings], backend: str, worker: Worker
) -> None:
    settings = settings_for(backend, automations=JOURNEYS)
    client = Garrison(settings)
    worker(settings, beat=True)
    at = (datetime.now(UTC) + timedelta(seconds=20)).replace(microsecond=500_000)
    for start in range(0, 10_000, 2_000):
        client.ingest_many(
            {"name": "test/alarm", "key": f"u{n}", "data": {"at": at.isoformat(), "n": n}}
            for n in range(start, start + 2_000)
        )
    analyze(client)

    def count(state: str) -> int:
        with client.db.session() as s:
            return int(s.execute(select(func.count()).where(
                RUNS.c.tenant == settings.tenant, RUNS.c.automation == "alarm", RUNS.c.status == state
            )).scalar_one())

    wait_until(lambda: count("completed") == 10_000, timeout=180, interval=1, what="10,000 alarms")
    with client.db.session() as s:
        timers = s.execute(
            select(TIMERS.c.status, func.count(), func.min(TIMERS.c.due_at), func.max(TIMERS.c.due_at))
            .where(TIMERS.c.tenant == settings.tenant).group_by(TIMERS.c.status)
        ).all()
    [(state, n, first, last)] = timers
    assert (state, n) == ("fired", 10_000)
    assert first == last  # all due in the same instant
    applied = timer_messages_applied(client, "alarm")
    assert len(applied) == 10_000 and set(applied.values()) == {1}
    assert timer_events(client) == 10_000


def test_a_workflow_changed_under_a_live_run_fails_that_run_on_the_new_worker(
    settings_for: Callable[..., Settings], backend: str, worker: Worker, tmp_path: Path
) -> None:
    settings = settings_for(backend, automations=JOURNEYS)
    client = Garrison(settings)
    log = tmp_path / "steps.jsonl"
    old = worker(settings, env={"GARRISON_TEST_STEP_ORDER": "ab", "GARRISON_TEST_STEP_LOG": str(log)})
    client.ingest("test/steps", "k", {"n": 1, "between": "2s"})
    wait_until(lambda: status(client, "stepper", "k") == "sleeping", what="the run to sleep between its steps")
    old.kill()
    worker(settings, beat=True, env={"GARRISON_TEST_STEP_ORDER": "ba", "GARRISON_TEST_STEP_LOG": str(log)})
    wait_until(lambda: status(client, "stepper", "k") == "failed", timeout=60, what="the run to fail")
    run = client.runs(automation="stepper")[0]
    assert run.error["type"] == "DeterminismError"
    assert "call 1 was step('step-a')" in run.error["message"] and "step('step-b')" in run.error["message"]
    steps: list[dict[str, Any]] = [json.loads(line) for line in log.read_text().splitlines()]
    assert [s["step"] for s in steps] == ["a"]  # step b never ran under the changed code


def test_a_failing_step_is_retried_with_backoff_until_it_succeeds(
    settings_for: Callable[..., Settings], backend: str, worker: Worker, tmp_path: Path
) -> None:
    settings = settings_for(backend, automations=JOURNEYS)
    client = Garrison(settings)
    log = tmp_path / "steps.jsonl"
    worker(settings, env={"GARRISON_TEST_STEP_LOG": str(log)})
    client.ingest("test/flaky", "k", {"fail": 2})
    wait_until(lambda: status(client, "flaky", "k") == "completed", timeout=60, what="the step to succeed")
    assert client.runs(automation="flaky")[0].result == "ok after 3"
    assert len(log.read_text().splitlines()) == 3
