"""Journeys on an injected clock: every wait, sleep, step, emit and rule of a run, applied in this
process against the real database (both backends). Timers fire by ``run_pending`` when the frozen
clock passes them; tests/test_timers.py drives the same journeys on real workers in real time."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from garrison import FrozenClock, Garrison, NullPublisher, Settings
from garrison.automations.journeys.journey import Journey, JourneyContext, journey, matches
from garrison.durations import format_duration, parse_duration
from garrison.errors import DefinitionError, GarrisonError, NotFound, ValidationError
from garrison.models import EVENTS, TIMERS

JOURNEYS = ("tests.apps.journeys",)


@pytest.fixture
def journeys(settings_for: Callable[..., Settings], backend: str) -> Iterator[Garrison]:
    """An offline client on a frozen clock with the test journeys."""
    settings = settings_for(backend, automations=JOURNEYS)
    client = Garrison(settings, publisher=NullPublisher(), clock=FrozenClock())
    yield client
    client.db.dispose()


def advance(client: Garrison, seconds: float) -> None:
    """Move the frozen clock and apply whatever came due (timers included)."""
    assert isinstance(client.clock, FrozenClock)
    client.clock.advance(seconds)
    client.run_pending()


def only_run(client: Garrison, automation: str, key: str = "k") -> Any:
    [run] = client.runs(automation=automation, key=key)
    return run


def timer_statuses(client: Garrison, automation: str) -> list[str]:
    with client.db.session() as s:
        return list(s.execute(
            select(TIMERS.c.status).where(TIMERS.c.tenant == client.settings.tenant, TIMERS.c.automation == automation)
            .order_by(TIMERS.c.id)
        ).scalars())


def step_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# -- the seed's journey --------------------------------------------------------------------------


def test_the_onboarding_journey_sends_exactly_the_seeds_reminders_and_ends_with_a_result(
    settings_for: Callable[..., Settings], backend: str
) -> None:
    from garrison.demo.onboarding import onboarding
    from tests.test_examples import load

    settings = settings_for(backend, automations=())
    client = Garrison(settings, automations=[onboarding], publisher=NullPublisher(), clock=FrozenClock())
    log = load("onboarding").simulate(client)
    assert log == [
        "waited 1s for account.created for user user1",
        "\tsend reminder to create account",
        "waited 2s for account.created for user user1",
        "\tsend reminder to create account",
        "waited 4s for account.created for user user1",
        "\tsend reminder to create account",
        "waited 6s for app/email.verified",
        "\tno email verified, wait for it",
        "waited 2s for post2 created",
        "\tsend reminder to write post2",
        "waited 2s for post2 created",
        "\tsend reminder to write post2",
        "end of workflow",
    ]
    run = only_run(client, "onboarding", "user1")
    assert run.status == "completed"
    assert run.result == {
        "email": "user1@example.com", "userId": "u1",
        "posts": [{"id": "post1", "userId": "u1"}, {"id": "post2", "userId": "u1"}],
    }
    with client.db.session() as s:
        names = list(s.execute(
            select(EVENTS.c.name).where(EVENTS.c.tenant == settings.tenant, EVENTS.c.key == "user1",
                                        EVENTS.c.name.like("reminder/%")).order_by(EVENTS.c.seq)
        ).scalars())
    assert names == ["reminder/account.created"] * 3 + ["reminder/post.created"] * 2
    # The account waits lasted 1 s, 2 s, 4 s, then 8 s (answered at 7.8 s): their timers, in order.
    start = datetime.fromisoformat(run.trigger["at"])
    timers = {(t.due_at - start).total_seconds(): t.status for t in client.run(run.id).timers}
    assert [timers[1.0], timers[3.0], timers[7.0], timers[15.0]] == ["fired", "fired", "fired", "cancelled"]
    assert client.replay("onboarding").ok


# -- waits ---------------------------------------------------------------------------------------


def test_a_wait_wakes_as_soon_as_its_event_arrives_and_its_timer_is_cancelled(journeys: Garrison) -> None:
    journeys.ingest("test/start", "k", {"id": 7, "timeout": "1h"})
    journeys.run_pending()
    run = only_run(journeys, "waiter")
    assert run.status == "waiting"
    assert run.waiting["name"] == "test/confirmed" and run.waiting["timeout"] == "1h"
    assert [t.status for t in journeys.run(run.id).timers] == ["pending"]

    journeys.ingest("test/confirmed", "k", {"id": 8})  # no match: another id
    advance(journeys, 1)
    assert only_run(journeys, "waiter").status == "waiting"
    journeys.ingest("test/confirmed", "k", {"id": 7, "by": "email"})
    advance(journeys, 1)
    run = only_run(journeys, "waiter")
    assert run.status == "completed"
    assert run.result == {"confirmed": [{"id": 7, "by": "email"}]}
    assert timer_statuses(journeys, "waiter") == ["cancelled"]


def test_a_wait_that_times_out_returns_none(journeys: Garrison) -> None:
    journeys.ingest("test/start", "k", {"id": 7, "timeout": "2s"})
    journeys.run_pending()
    advance(journeys, 1.9)
    assert only_run(journeys, "waiter").status == "waiting"
    advance(journeys, 0.1)
    run = only_run(journeys, "waiter")
    assert (run.status, run.result) == ("completed", {"confirmed": None})
    assert timer_statuses(journeys, "waiter") == ["fired"]
    journeys.ingest("test/confirmed", "k", {"id": 7})  # too late: the run is over
    advance(journeys, 1)
    assert only_run(journeys, "waiter").result == {"confirmed": None}


def test_an_event_that_arrived_before_the_wait_was_reached_counts_once(journeys: Garrison) -> None:
    journeys.ingest("test/ping", "k", {"n": 0})  # before the trigger: never counts
    journeys.ingest("test/look", "k", {"for": "10s"})
    journeys.run_pending()
    journeys.ingest("test/ping", "k", {"n": 1})  # while the run sleeps, before its waits
    journeys.ingest("test/ping", "k", {"n": 2})
    advance(journeys, 10)
    run = only_run(journeys, "lookback")
    # The first wait returns both pings at once; the second does not see them again and waits.
    assert run.status == "waiting"
    assert run.history[1]["kind"] == "wait" and [e["data"]["n"] for e in run.history[1]["result"]] == [1, 2]
    journeys.ingest("test/ping", "k", {"n": 3})
    advance(journeys, 1)
    assert only_run(journeys, "lookback").result == [[1, 2], [3]]


def test_a_sleep_resumes_after_its_duration_and_an_emitted_event_is_written_once(journeys: Garrison) -> None:
    journeys.ingest("test/nap", "k", {"for": "30s", "n": 1})
    journeys.run_pending()
    assert only_run(journeys, "sleeper").status == "sleeping"
    advance(journeys, 29)
    assert only_run(journeys, "sleeper").status == "sleeping"
    advance(journeys, 1)
    run = only_run(journeys, "sleeper")
    assert (run.status, run.result) == ("completed", {"slept": 30.0, "n": 1})
    with journeys.db.session() as s:
        woke = s.execute(select(func.count()).where(EVENTS.c.tenant == journeys.settings.tenant,
                                                    EVENTS.c.name == "test/woke")).scalar_one()
    assert woke == 1


# -- steps ---------------------------------------------------------------------------------------


def test_steps_run_once_each_after_commit_with_a_stable_idempotency_key(
    journeys: Garrison, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "steps.jsonl"
    monkeypatch.setenv("GARRISON_TEST_STEP_LOG", str(log))
    journeys.ingest("test/steps", "k", {"n": 5, "between": "1m"})
    journeys.run_pending()
    assert [e["step"] for e in step_log(log)] == ["a"]
    assert only_run(journeys, "stepper").status == "sleeping"
    advance(journeys, 60)
    run = only_run(journeys, "stepper")
    assert run.status == "completed"
    assert run.result == [{"step": "a", "n": 5}, {"step": "b", "n": 5}]
    entries = step_log(log)
    assert [e["step"] for e in entries] == ["a", "b"]  # re-executions did not run step a again
    assert entries[0]["idempotency_key"] == "stepper:k:1:0"
    assert journeys.replay("stepper").ok


def test_a_step_that_fails_for_good_fails_the_run_and_a_retry_runs_it_again(
    journeys: Garrison, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "steps.jsonl"
    monkeypatch.setenv("GARRISON_TEST_STEP_LOG", str(log))
    journeys.ingest("test/flaky", "k", {"fail": 1})
    with pytest.raises(ConnectionError):
        journeys.run_pending()  # offline, every attempt is the last: the step's error surfaces here
    journeys.run_pending()
    run = only_run(journeys, "flaky")
    assert run.status == "failed"
    assert run.error["type"] == "StepFailed" and "attempt 1 failed" in run.error["message"]
    journeys.retry_run(f"run/{run.id}")
    journeys.run_pending()
    run = only_run(journeys, "flaky")
    assert (run.status, run.result) == ("completed", "ok after 2")


# -- failures, determinism, operators ---------------------------------------------------------------


def test_a_journey_that_raises_fails_its_run_and_a_retry_after_the_fix_completes_it(
    journeys: Garrison, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GARRISON_TEST_FIXED", raising=False)
    journeys.ingest("test/raise", "k", {})
    advance(journeys, 1)
    run = only_run(journeys, "raiser")
    assert run.status == "failed"
    assert run.error["type"] == "RuntimeError" and "not fixed yet" in run.error["traceback"]
    journeys.cancel_run(run.id)  # an operator gives up on this one
    journeys.run_pending()
    assert journeys.run(run.id).status == "cancelled"
    with pytest.raises(GarrisonError, match="is cancelled; retry takes a run that is failed"):
        journeys.retry_run(run.id)
    # A new run fails the same way; this time the fix is deployed and the run retried.
    journeys.ingest("test/raise", "k", {})
    advance(journeys, 1)
    failed = journeys.runs(automation="raiser", status="failed")
    assert len(failed) == 1
    monkeypatch.setenv("GARRISON_TEST_FIXED", "1")
    journeys.retry_run(failed[0].id)
    journeys.run_pending()
    assert journeys.run(failed[0].id).status == "completed"
    assert journeys.run(failed[0].id).result == "fixed"
    with pytest.raises(GarrisonError, match="takes a run that is failed"):
        journeys.retry_run(failed[0].id)
    with pytest.raises(NotFound):
        journeys.retry_run("run/999999")


def test_a_workflow_changed_under_a_live_run_fails_that_run_naming_the_step(
    journeys: Garrison, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GARRISON_TEST_STEP_ORDER", "ab")
    journeys.ingest("test/steps", "k", {"n": 1, "between": "10s"})
    journeys.run_pending()
    assert only_run(journeys, "stepper").status == "sleeping"
    monkeypatch.setenv("GARRISON_TEST_STEP_ORDER", "ba")  # the new deploy swapped the steps
    advance(journeys, 10)
    run = only_run(journeys, "stepper")
    assert run.status == "failed"
    assert run.error["type"] == "DeterminismError"
    assert "call 1 was step('step-a')" in run.error["message"]
    assert "now calls step('step-b')" in run.error["message"]
    # Deploying the old order back and retrying finishes the run.
    monkeypatch.setenv("GARRISON_TEST_STEP_ORDER", "ab")
    journeys.retry_run(run.id)
    journeys.run_pending()
    assert only_run(journeys, "stepper").status == "completed"


def test_an_operator_cancels_a_run_and_its_timer_never_fires(journeys: Garrison) -> None:
    journeys.ingest("test/nap", "k", {"for": "5s"})
    journeys.run_pending()
    run = only_run(journeys, "sleeper")
    journeys.cancel_run(run.label, reason="support asked")
    journeys.run_pending()
    run = journeys.run(run.id)
    assert run.status == "cancelled" and run.error["message"] == "support asked"
    assert [t.status for t in run.timers] == ["cancelled"]
    advance(journeys, 10)
    assert journeys.run(run.id).status == "cancelled"


def test_cancel_on_cancels_the_active_run(journeys: Garrison) -> None:
    journeys.ingest("test/raise", "k", {})
    journeys.run_pending()
    journeys.ingest("test/stop", "k", {})
    journeys.run_pending()
    run = only_run(journeys, "raiser")
    assert run.status == "cancelled" and "test/stop" in run.error["message"]


# -- concurrency ---------------------------------------------------------------------------------


def test_a_trigger_while_a_run_is_active_is_skipped_by_default(journeys: Garrison) -> None:
    journeys.ingest("test/start", "k", {"id": 1, "timeout": "1h"})
    journeys.ingest("test/start", "k", {"id": 2, "timeout": "1h"})
    journeys.run_pending()
    assert len(journeys.runs(automation="waiter")) == 1
    journeys.ingest("test/confirmed", "k", {"id": 1})
    journeys.ingest("test/start", "k", {"id": 3, "timeout": "1h"})  # the first run ended: this one starts
    journeys.run_pending()
    assert [r.status for r in journeys.runs(automation="waiter")] == ["waiting", "completed"]


def test_queue_runs_triggers_one_after_the_other_and_parallel_runs_them_together(journeys: Garrison) -> None:
    for job in ("a", "b", "c"):
        journeys.ingest("test/job", "k", {"job": job})
        journeys.ingest("test/par", "k", {"job": job})
    journeys.run_pending()
    assert [r.status for r in journeys.runs(automation="queued")] == ["waiting"]
    assert len(journeys.runs(automation="parallel", status="waiting")) == 3
    for job in ("a", "b", "c"):
        journeys.ingest("test/done", "k", {"job": job})
        journeys.run_pending()
    assert [r.result for r in journeys.runs(automation="queued")] == ["c", "b", "a"]  # newest first
    assert sorted(r.result for r in journeys.runs(automation="parallel")) == ["a", "b", "c"]


def test_system_events_are_seen_by_waits_but_start_no_run(journeys: Garrison) -> None:
    journeys.ingest("test/start", "k", {"id": 1}, system=True)
    journeys.run_pending()
    assert journeys.runs(automation="waiter") == []
    journeys.ingest("test/start", "k", {"id": 1, "timeout": "1h"})
    journeys.ingest("test/confirmed", "k", {"id": 1}, system=True)
    journeys.run_pending()
    assert only_run(journeys, "waiter").result == {"confirmed": [{"id": 1}]}


def test_runs_are_scoped_by_tenant(journeys: Garrison) -> None:
    journeys.ingest("test/nap", "k", {"for": "1s"}, tenant="other")
    journeys.run_pending("other")
    assert journeys.runs() == []
    [run] = journeys.runs(tenant="other")
    with pytest.raises(NotFound):
        journeys.run(run.id)
    assert journeys.run(run.id, tenant="other").status == "sleeping"


# -- definitions and helpers (no database) ------------------------------------------------------


def test_a_journey_is_checked_when_it_is_defined() -> None:
    def fn(event: Any, ctx: JourneyContext) -> None:
        return None

    with pytest.raises(DefinitionError, match="at least one trigger"):
        Journey("j", fn, on=())
    with pytest.raises(DefinitionError, match="concurrency must be one of skip, queue, parallel"):
        Journey("j", fn, on="a", concurrency="replace")
    with pytest.raises(DefinitionError, match="takes event names"):
        Journey("j", fn, on=["a", 3])  # type: ignore[list-item]


def test_durations_follow_the_ms_format() -> None:
    assert parse_duration("500ms") == timedelta(milliseconds=500)
    assert parse_duration("1s") == timedelta(seconds=1)
    assert parse_duration("2m") == timedelta(minutes=2)
    assert parse_duration("1h") == timedelta(hours=1)
    assert parse_duration("7d") == timedelta(days=7)
    assert parse_duration("1w") == timedelta(weeks=1)
    assert parse_duration("1.5 hours") == timedelta(minutes=90)
    assert parse_duration("100") == timedelta(milliseconds=100)  # ms("100"): milliseconds
    assert parse_duration(2) == timedelta(seconds=2)
    assert parse_duration(timedelta(days=1)) == timedelta(days=1)
    for bad in ("soon", "5 parsecs", "-1s", "", True):
        with pytest.raises(ValidationError):
            parse_duration(bad)  # type: ignore[arg-type]
    assert [format_duration(parse_duration(x)) for x in ("6s", "1500ms", "2m", "3d", "14d")] == [
        "6s", "1500ms", "2m", "3d", "2w"]


def test_match_is_a_strict_subset_match_with_nested_keys() -> None:
    data = {"email": "a@b.c", "n": 1, "user": {"id": 42, "plan": "pro"}, "flag": True}
    assert matches(data, {"email": "a@b.c", "n": 1})
    assert matches(data, {"user": {"id": 42}})
    assert matches(data, {"user.id": 42})
    assert not matches(data, {"n": True})  # 1 is not True
    assert not matches(data, {"n": 1.0})  # nor 1.0
    assert not matches(data, {"flag": 1})
    assert not matches(data, {"email": "a@b.c", "missing": None})
    assert not matches(data, {"user": {"id": "42"}})
    assert matches(data, None) and matches(data, {})


def test_an_event_a_journey_cannot_emit_fails_its_run_naming_the_field(
    settings_for: Callable[..., Settings], backend: str
) -> None:
    @journey("emitter", on="go")
    def emitter(event: Any, ctx: JourneyContext) -> None:
        ctx.ingest("fine", {"n": 1})
        ctx.ingest("huge", {"blob": "x" * 2_000})

    settings = settings_for(backend, automations=(), max_payload_bytes=1_000)
    client = Garrison(settings, automations=[emitter], publisher=NullPublisher(), clock=FrozenClock())
    client.ingest("go", "k")
    client.run_pending()
    run = only_run(client, "emitter")
    assert run.status == "failed"
    assert run.error["type"] == "PayloadTooLarge" and "1000" in run.error["message"]
    with client.db.session() as s:
        names = list(s.execute(select(EVENTS.c.name).where(EVENTS.c.tenant == settings.tenant)
                               .order_by(EVENTS.c.seq)).scalars())
    assert names == ["go", "fine"]  # the call before the error was made, once; the refused one wrote nothing
