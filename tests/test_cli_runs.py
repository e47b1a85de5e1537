"""The CLI operates journeys: ``inspect`` shows each run of a key (its calls, its open wait or sleep, timers,
log, result or error), ``runs`` lists and filters them, ``retry run/ID`` re-executes a failed one and
``cancel`` ends one; ``retry`` of a failure id works as before. Runs are made offline on a frozen clock."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from click.testing import CliRunner, Result

from garrison import FrozenClock, Garrison, NullPublisher, Settings
from garrison.automations.journeys.journey import JourneyContext, journey
from garrison.cli import cli
from garrison.core.contract import Message
from garrison.core.runs import RunInfo
from tests.apps.counter import counter

AUTOMATIONS = ("tests.apps.journeys", "tests.apps.counter")


@journey("logger", on="test/log")
def logger(event: Message, ctx: JourneyContext) -> Any:
    """Writes a log line before and after a sleep."""
    ctx.log(f"hello {event.data['who']}")
    ctx.sleep("1s")
    ctx.log("bye")
    return "logged"


@pytest.fixture
def journeys(
    settings_for: Callable[..., Settings], backend: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Garrison]:
    """An offline client on a frozen clock (2024-01-01 00:00:00 UTC) with the test journeys."""
    monkeypatch.delenv("GARRISON_TEST_FIXED", raising=False)
    settings = settings_for(backend, automations=AUTOMATIONS)
    client = Garrison(settings, automations=[logger], publisher=NullPublisher(), clock=FrozenClock())
    yield client
    client.db.dispose()


def run(settings: Settings, *args: str) -> Result:
    return CliRunner(env=settings.as_env()).invoke(cli, list(args), catch_exceptions=False)


def advance(client: Garrison, seconds: float) -> None:
    assert isinstance(client.clock, FrozenClock)
    client.clock.advance(seconds)
    client.run_pending()


def only(client: Garrison, journey_name: str, **filters: Any) -> RunInfo:
    [found] = client.runs(automation=journey_name, **filters)
    return found


def block_of(page: str, run: RunInfo) -> str:
    """The lines of one run in an inspect page: from its header to the next run's header."""
    lines = page.split("\n\n")
    [section] = [part for part in lines if part.startswith("Journey runs")]
    blocks = re.split(r"\n(?=  run/)", section)
    [block] = [b for b in blocks if b.strip().startswith(f"{run.label} ")]
    return block


def failed_raiser(client: Garrison, key: str = "k", tenant: str | None = None) -> RunInfo:
    """The raiser waits 200ms for test/go, then raises RuntimeError('not fixed yet')."""
    client.ingest("test/raise", key, {}, tenant=tenant)
    advance(client, 1)
    failed = only(client, "raiser", key=key, tenant=tenant)
    assert failed.status == "failed"
    return failed


def test_inspect_shows_each_run_with_its_calls_wait_timers_log_result_and_error(journeys: Garrison) -> None:
    settings = journeys.settings
    journeys.ingest("test/start", "k", {"id": 7, "timeout": "1h"})
    journeys.ingest("test/nap", "k", {"for": "2s", "n": 3})
    journeys.ingest("test/log", "k", {"who": "ann"})
    journeys.run_pending()
    failed = failed_raiser(journeys)  # at 00:00:01
    advance(journeys, 1)  # 00:00:02: the sleeper wakes up and completes (the logger did at 00:00:01)
    waiter, sleeper, logged = only(journeys, "waiter"), only(journeys, "sleeper"), only(journeys, "logger")
    assert (waiter.status, sleeper.status, logged.status) == ("waiting", "completed", "completed")

    result = run(settings, "inspect", "k")
    assert result.exit_code == 0, result.output
    page = result.stdout
    assert "\nJourney runs\n" in page

    waiting = block_of(page, waiter)
    assert re.match(r"  run/\d+ +waiter +waiting +started 2024-01-01 00:00:00  updated 2024-01-01 00:00:00", waiting)
    assert "    trigger  test/start (event 1, seq 1) {\"id\":7,\"timeout\":\"1h\"}" in waiting
    assert ('    waiting  wait_for test/confirmed match {"id":7}, timeout 1h (due 2024-01-01 01:00:00)'
            in waiting)
    assert "    history  none" in waiting
    assert re.search(r"\n +NAME +DUE +STATUS +FIRED\n +1:0 +2024-01-01 01:00:00 +pending +-\n?", waiting)
    assert "result" not in waiting and "error" not in waiting

    done = block_of(page, sleeper)
    assert "ended 2024-01-01 00:00:02" in done.splitlines()[0]
    calls = [line.split(None, 2) for line in done.splitlines() if re.match(r" +\d +\w+ ", line)]
    assert [(c[0], c[1]) for c in calls] == [("1", "now"), ("2", "sleep"), ("3", "now"), ("4", "emit")]
    assert "2024-01-01 00:00:00" in calls[0][2] and "until 2024-01-01 00:00:02" in calls[1][2]
    assert "test/woke for 'k'" in calls[3][2] and 'ingested {"n":3}' in calls[3][2]
    assert re.search(r"\n +1:1 +2024-01-01 00:00:02 +fired +2024-01-01 00:00:02", done)
    assert '    result   {"n":3,"slept":2.0}' in done

    with_log = block_of(page, logged)
    assert re.search(r"    log\n +AT +TEXT\n +2024-01-01 00:00:00 +hello ann\n +2024-01-01 00:00:01 +bye", with_log)
    assert "    result   logged" in with_log

    broken = block_of(page, failed)
    assert re.search(r"\n +1 +wait +test/go +timed out", broken)
    assert "    error    RuntimeError: not fixed yet" in broken
    assert "Traceback" not in page
    assert f"retry a failed run with: garrison retry {failed.label}" in page
    assert "show tracebacks with: --traceback" in page
    assert f"cancel a run with: garrison cancel {waiter.label}" in page

    traced = run(settings, "inspect", "k", "--traceback").stdout
    broken = block_of(traced, failed)
    assert "        Traceback (most recent call last):" in broken
    assert 'raise RuntimeError("not fixed yet")' in broken and "--traceback" not in traced

    only_waiter = run(settings, "inspect", "k", "--automation", "waiter").stdout
    assert only_waiter.count("  run/") == 1 and waiter.label in only_waiter

    report = json.loads(run(settings, "inspect", "k", "--json").stdout)
    by_journey = {r["automation"]: r for r in report["runs"]}
    assert by_journey["waiter"]["waiting"]["due_at"] == "2024-01-01T01:00:00+00:00"
    assert by_journey["waiter"]["timers"] == [
        {"name": "1:0", "due_at": "2024-01-01T01:00:00+00:00", "status": "pending", "fired_at": None}
    ]
    assert by_journey["sleeper"]["result"] == {"n": 3, "slept": 2.0}
    assert by_journey["raiser"]["error"]["type"] == "RuntimeError"
    assert "not fixed yet" in by_journey["raiser"]["error"]["traceback"]
    assert [r["id"] for r in report["runs"]] == sorted(r["id"] for r in report["runs"])


def test_a_key_with_only_runs_of_another_tenant_shows_nothing(journeys: Garrison) -> None:
    journeys.ingest("test/start", "k", {"id": 1}, tenant="acme")
    journeys.run_pending("acme")
    missing = run(journeys.settings, "inspect", "k")
    assert missing.exit_code == 1 and missing.stdout.startswith("nothing stored for key 'k'")
    found = run(journeys.settings, "inspect", "k", "--tenant", "acme")
    assert found.exit_code == 0 and "waiter" in found.stdout and "wait_for test/confirmed" in found.stdout


def test_runs_lists_newest_first_and_filters_by_status_journey_key_and_limit(journeys: Garrison) -> None:
    settings = journeys.settings
    journeys.ingest("test/start", "a", {"id": 1, "timeout": "30m"})
    journeys.ingest("test/nap", "b", {"for": "1h"})
    failed = failed_raiser(journeys, key="c")
    journeys.ingest("test/start", "d", {"id": 2, "timeout": "0s"})  # times out at once: completed
    journeys.run_pending()
    journeys.ingest("test/raise", "x", {}, tenant="acme")
    journeys.run_pending("acme")

    listed = run(settings, "runs")
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["ID", "JOURNEY", "KEY", "STATUS", "STARTED", "UPDATED", "DETAIL"]
    rows = [line.split() for line in lines[1:5]]
    assert [(r[1], r[2], r[3]) for r in rows] == [
        ("waiter", "d", "completed"), ("raiser", "c", "failed"), ("sleeper", "b", "sleeping"),
        ("waiter", "a", "waiting"),
    ]
    assert [int(r[0].removeprefix("run/")) for r in rows] == sorted((int(r[0][4:]) for r in rows), reverse=True)
    assert lines[1].endswith('result {"confirmed":null}')
    assert lines[2].endswith("RuntimeError: not fixed yet")
    assert lines[3].endswith("sleep until 2024-01-01 01:00:00")
    assert lines[4].endswith('wait_for test/confirmed match {"id":1}, timeout 30m (due 2024-01-01 00:30:00)')
    assert lines[5:] == ["", f"retry a failed run with: garrison retry {failed.label}"]
    assert "acme" not in listed.stdout and " x " not in listed.stdout

    by_status = run(settings, "runs", "--status", "failed").stdout.splitlines()
    assert [line.split()[0] for line in by_status[1:] if line.startswith("  run/")] == [failed.label]
    for option in ("--journey", "--automation"):
        waiters = run(settings, "runs", option, "waiter").stdout
        assert [line.split()[2] for line in waiters.splitlines()[1:]] == ["d", "a"]
    assert [line.split()[2] for line in run(settings, "runs", "--key", "b").stdout.splitlines()[1:]] == ["b"]
    assert len(run(settings, "runs", "--limit", "1").stdout.splitlines()) == 2
    acme = run(settings, "runs", "--tenant", "acme").stdout.splitlines()
    assert [line.split()[1:4] for line in acme[1:2]] == [["raiser", "x", "waiting"]]

    none = run(settings, "runs", "--status", "stepping", "--key", "a")
    assert (none.exit_code, none.stdout) == (0, "no runs (status 'stepping', key 'a')\n")
    bad = run(settings, "runs", "--status", "sleepy")
    assert bad.exit_code == 2 and "sleepy" in bad.output

    as_json = json.loads(run(settings, "runs", "--json", "--status", "waiting").stdout)
    assert [(r["automation"], r["key"], r["waiting"]["timeout"]) for r in as_json] == [("waiter", "a", "30m")]
    assert as_json[0]["started_at"] == "2024-01-01T00:00:00+00:00"


def test_retry_run_re_executes_a_failed_run_once_its_cause_is_fixed(
    journeys: Garrison, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = journeys.settings
    failed = failed_raiser(journeys)

    retried = run(settings, "retry", failed.label)
    assert retried.exit_code == 0, retried.output
    assert re.fullmatch(
        rf"{failed.label} retry sent as event \d+ \(raiser for key 'k', seq \d+\); see it with: garrison inspect k\n",
        retried.stdout,
    )
    monkeypatch.setenv("GARRISON_TEST_FIXED", "1")  # the fix is deployed before the retry is applied
    journeys.run_pending()
    done = journeys.run(failed.id)
    assert (done.status, done.result, done.error) == ("completed", "fixed", None)
    assert "    result   fixed" in block_of(run(settings, "inspect", "k").stdout, done)

    again = run(settings, "retry", failed.label)
    assert again.exit_code == 1 and again.stdout == ""
    assert again.stderr == (
        f"error: run {failed.id} is completed; retry takes a run that is failed (tenant='default', run={failed.id})\n"
    )
    unknown = run(settings, "retry", "run/999999")
    assert unknown.exit_code == 1
    assert unknown.stderr == "error: no such run (tenant='default', run=999999)\n"
    other_tenant = run(settings, "retry", failed.label, "--tenant", "acme")
    assert other_tenant.exit_code == 1 and "no such run" in other_tenant.stderr

    for args, message in (
        (["run/abc"], "'run/abc' is not a run id (run/ID)"),
        (["nonsense"], "'nonsense' is not a failure id (ID or failure/ID) nor a run id (run/ID)"),
        ([failed.label, "--all"], "not both"),
    ):
        refused = run(settings, "retry", *args)
        assert refused.exit_code == 2 and message in refused.stderr, refused.output


def test_retry_refuses_a_run_that_is_not_failed(journeys: Garrison) -> None:
    journeys.ingest("test/start", "k", {"id": 1})
    journeys.run_pending()
    waiting = only(journeys, "waiter")
    refused = run(journeys.settings, "retry", waiting.label)
    assert refused.exit_code == 1
    assert refused.stderr.startswith(f"error: run {waiting.id} is waiting; retry takes a run that is failed")
    journeys.run_pending()
    assert only(journeys, "waiter").status == "waiting"


def test_cancel_ends_a_run_and_its_timer_with_the_reason(journeys: Garrison) -> None:
    settings = journeys.settings
    journeys.ingest("test/nap", "k", {"for": "5s"})
    journeys.run_pending()
    sleeping = only(journeys, "sleeper")
    assert [t.status for t in journeys.run(sleeping.id).timers] == ["pending"]

    cancelled = run(settings, "cancel", sleeping.label, "--reason", "support asked")
    assert cancelled.exit_code == 0, cancelled.output
    assert re.fullmatch(
        rf"{sleeping.label} cancel sent as event \d+ \(sleeper for key 'k', seq \d+\): support asked\n",
        cancelled.stdout,
    )
    journeys.run_pending()
    advance(journeys, 10)
    ended = journeys.run(sleeping.id)
    assert (ended.status, ended.error and ended.error["message"]) == ("cancelled", "support asked")
    assert [t.status for t in ended.timers] == ["cancelled"]
    block = block_of(run(settings, "inspect", "k").stdout, ended)
    assert "    error    Cancelled: support asked" in block
    assert re.search(r"\n +1:1 +2024-01-01 00:00:05 +cancelled +-", block)
    assert run(settings, "runs", "--status", "cancelled").stdout.splitlines()[1].endswith("Cancelled: support asked")

    twice = run(settings, "cancel", str(sleeping.id))  # a bare id is a run id too
    assert twice.exit_code == 1 and f"run {sleeping.id} is cancelled; cancel takes a run that is" in twice.stderr
    unknown = run(settings, "cancel", "run/424242")
    assert unknown.exit_code == 1 and unknown.stderr == "error: no such run (tenant='default', run=424242)\n"
    malformed = run(settings, "cancel", "failure/3")
    assert malformed.exit_code == 2 and "is not a run id" in malformed.stderr

    journeys.ingest("test/start", "k", {"id": 1})
    journeys.run_pending()
    waiting = only(journeys, "waiter")
    plain = run(settings, "cancel", waiting.label)
    assert re.fullmatch(rf"{waiting.label} cancel sent as event \d+ \(waiter for key 'k', seq \d+\)\n", plain.stdout)
    journeys.run_pending()
    assert journeys.run(waiting.id).error == {"type": "Cancelled", "message": "cancelled by an operator",
                                              "traceback": ""}


def test_retry_of_a_failure_by_bare_id_or_failure_slash_id_works_as_before(journeys: Garrison) -> None:
    settings = journeys.settings
    counter.send("add", "k1", {"n": 1, "boom": True}, client=journeys)
    journeys.run_pending()
    [first] = journeys.failures()

    bare = run(settings, "retry", str(first))
    assert bare.exit_code == 0, bare.output
    assert bare.stdout.startswith(f"failure {first} retried as event ")
    journeys.run_pending()  # still boom: a new failure
    [second] = journeys.failures()
    assert second != first
    prefixed = run(settings, "retry", f"failure/{second}")
    assert prefixed.exit_code == 0 and prefixed.stdout.startswith(f"failure {second} retried as event ")
    journeys.run_pending()
    [third] = journeys.failures()

    assert run(settings, "retry", str(first)).exit_code == 1  # already retried
    assert "no such failure" in run(settings, "retry", "failure/999").stderr
    everything = run(settings, "retry", "--all", "--automation", "counter")
    assert everything.exit_code == 0 and everything.stdout.startswith(f"failure {third} retried as event ")
    journeys.run_pending()
    assert run(settings, "retry", "--all").stdout.startswith("failure ")
    assert run(settings, "retry", str(first), "--automation", "counter").exit_code == 2
