"""Retention: each rule deletes what its window lets go and keeps what is still needed (a live run's
look-back, a pending message, a failure's message, the last versions of an entity), in small batches,
per tenant; replay then starts from the oldest kept version; a follow cursor behind what went is refused.
Time moves by a FrozenClock; the statements run against the real database of both backends."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, text

from garrison.cli import cli
from garrison.client import Garrison
from garrison.clock import FrozenClock
from garrison.config import Settings
from garrison.core import retention
from garrison.core.publisher import NullPublisher
from garrison.errors import ConfigurationError, CursorExpired, NotFound
from garrison.models import EFFECTS, EVENTS, FAILURES, RUNS, TIMERS, VERSIONS
from garrison.models.pulses import PULSE_SLOTS
from garrison.ops.stats import collect_stats
from garrison.pulses.fanout import fan_out_chunk, open_slot, save_schedule
from garrison.pulses.schedules import PulseSchedule
from tests.harness import WorkerProcess, child_env, wait_until

START = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
WINDOWS = {f"retention_{rule}_days": 1.0 for rule in retention.RULES}


@pytest.fixture
def client(backend: str, settings_for: Callable[..., Settings]) -> Iterator[Garrison]:
    settings = settings_for(backend, automations=("tests.apps.counter", "tests.apps.journeys"),
                            retention_batch=3, retention_versions_keep=2, **WINDOWS)
    c = Garrison(settings, publisher=NullPublisher(), clock=FrozenClock(START))
    yield c
    c.db.dispose()


def later(client: Garrison, delta: timedelta) -> None:
    clock = client.clock
    assert isinstance(clock, FrozenClock)
    clock.advance(delta.total_seconds())


def add(client: Garrison, key: str, n: int, **data: Any) -> None:
    client.ingest("add", key, {"n": n, **data}, target="counter")


def rows(client: Garrison, table: Any, *columns: Any, where: Any = None) -> list[Any]:
    query = select(*columns).where(table.c.tenant == client.settings.tenant)
    if where is not None:
        query = query.where(where)
    with client.db.session() as s:
        return sorted(tuple(r) for r in s.execute(query))


def versions(client: Garrison, key: str) -> list[int]:
    return [v for (v,) in rows(client, VERSIONS, VERSIONS.c.version, where=VERSIONS.c.key == key)]


def prune(client: Garrison, rule: str) -> int:
    return client.prune(dry_run=False).deleted.get(client.settings.tenant, {}).get(rule, 0)


def test_versions_older_than_the_window_go_except_the_last_ones_before_it(client: Garrison) -> None:
    for n in range(6):
        add(client, "k", n)
    for n in range(3):
        add(client, "j", n)
    client.run_pending(effects=False)
    old = client.follow(wait=False)
    next(old)                                                  # a reader that stopped after k's first version
    later(client, 2 * DAY)
    for n in range(3):
        add(client, "j", 3 + n)
    client.run_pending(effects=False)

    would = client.prune(dry_run=True).deleted[client.settings.tenant]["versions"]
    assert versions(client, "k") == [1, 2, 3, 4, 5, 6]          # a dry run deletes nothing
    assert prune(client, "versions") == would == 4 + 1          # k: 1..4 (6 and 5 kept); j: 1 (3 and 2 kept)
    assert versions(client, "k") == [5, 6] and versions(client, "j") == [2, 3, 4, 5, 6]
    assert client.state("counter", "k")["count"] == 6
    with pytest.raises(NotFound, match="deleted by retention"):
        client.state("counter", "k", version=4)
    with pytest.raises(CursorExpired):
        client.follow(since=old.cursor)
    assert prune(client, "versions") == 0                      # the walk resumes at its mark: nothing new

    later(client, DAY + timedelta(hours=12))                   # j's last three are older than the window now
    assert prune(client, "versions") == 3                      # j: 2, 3 and 4
    assert versions(client, "j") == [5, 6]
    first = next(client.follow(wait=False))
    assert (first.version, first.prev) == (5, None)            # its predecessor went


def test_events_go_once_applied_and_old_unless_a_live_run_or_a_failure_needs_them(client: Garrison) -> None:
    for n in range(4):
        add(client, "applied", n)
    add(client, "failed", 1, boom=True)                        # its failure waits for a retry
    client.ingest("test/start", "waiting", {"id": 1, "timeout": "30d"})
    client.ingest("test/other", "waiting", {})                # in the live run's look-back
    client.run_pending(effects=False)
    add(client, "pending", 1)                                  # committed, never applied
    later(client, 2 * DAY)
    add(client, "applied", 9)                                  # recent: stays

    gone = prune(client, "events")

    kept = rows(client, EVENTS, EVENTS.c.key, EVENTS.c.seq)
    assert kept == [("applied", 5), ("failed", 1), ("pending", 1), ("waiting", 2)]
    assert gone == 4 + 1                                       # applied 1-4, and the run's own trigger
    [failure] = rows(client, FAILURES, FAILURES.c.id)
    client.retry(failure[0])
    client.run_pending(effects=False)
    later(client, 2 * DAY)
    client.run_pending(effects=False)
    prune(client, "events")
    assert ("failed", 1) not in rows(client, EVENTS, EVENTS.c.key, EVENTS.c.seq)   # retried: it may go now
    assert ("waiting", 2) in rows(client, EVENTS, EVENTS.c.key, EVENTS.c.seq)      # the run still waits


def test_replay_starts_from_the_oldest_kept_version_once_the_first_events_are_gone(client: Garrison) -> None:
    for n in range(5):
        add(client, "k", n)
    client.run_pending(effects=False)
    later(client, 2 * DAY)
    for n in range(2):
        add(client, "k", 10 + n)
    client.run_pending(effects=False)
    client.prune()
    assert [s for (s,) in rows(client, EVENTS, EVENTS.c.seq)] == [6, 7]
    assert versions(client, "k") == [4, 5, 6, 7]

    report = client.replay("counter")

    assert report.ok and report.from_snapshots == 1 and report.events == 2
    assert client.check("counter", "k") == []


def test_done_effects_fired_and_cancelled_timers_ended_runs_and_resolved_failures_go(client: Garrison) -> None:
    add(client, "k", 1)                                        # a listener effect, done below
    client.ingest("test/start", "timed-out", {"id": 1, "timeout": "1m"})    # its timer fires, the run completes
    client.ingest("test/start", "confirmed", {"id": 2, "timeout": "1h"})
    client.ingest("test/confirmed", "confirmed", {"id": 2})   # its timer is cancelled
    client.ingest("test/start", "live", {"id": 3, "timeout": "30d"})        # pending timer, live run
    client.ingest("test/raise", "broken", {})                  # a failed run: kept, it may be retried
    add(client, "bad", 1, boom=True)
    add(client, "bad", 2, boom=True)
    client.run_pending()
    later(client, timedelta(minutes=2))
    client.run_pending()
    client.run_pending()
    [first, second] = rows(client, FAILURES, FAILURES.c.id)
    client.retry(first[0])                                     # resolved (its retry fails anew: a new failure)
    add(client, "k", 2)
    client.run_pending(effects=False)                          # an effect left pending: kept
    later(client, 2 * DAY)

    report = client.prune().deleted[client.settings.tenant]

    assert rows(client, EFFECTS, EFFECTS.c.status) == [("pending",)]
    assert rows(client, TIMERS, TIMERS.c.status) == [("pending",)]
    assert rows(client, RUNS, RUNS.c.key, RUNS.c.status) == [("broken", "failed"), ("live", "waiting")]
    assert [f for f in rows(client, FAILURES, FAILURES.c.id, FAILURES.c.status) if f[0] <= second[0]] == [
        (second[0], "failed")]
    assert {status for _, status in rows(client, FAILURES, FAILURES.c.id, FAILURES.c.status)} == {"failed"}
    assert (report["timers"], report["runs"], report["failures"]) == (2, 2, 1)


def test_finished_pulse_slots_go_and_a_running_one_stays(client: Garrison) -> None:
    tenant = client.settings.tenant
    add(client, "k", 1)
    client.run_pending(effects=False)
    schedule = save_schedule(client.db, tenant, PulseSchedule("tick", "counter", "add", every="1m"), START)
    done = open_slot(client.db, tenant, schedule, START + timedelta(minutes=1), client.clock.now())
    assert done is not None
    while fan_out_chunk(client.db, tenant, done.id, client.clock.now()) is not None:
        pass
    running = open_slot(client.db, tenant, schedule, START + timedelta(minutes=2), client.clock.now())
    skipped = open_slot(client.db, tenant, schedule, START + timedelta(minutes=3), client.clock.now())
    assert running is not None and skipped is not None and skipped.status == "skipped"
    later(client, 2 * DAY)

    assert prune(client, "pulse_slots") == 2
    assert rows(client, PULSE_SLOTS, PULSE_SLOTS.c.status) == [("running",)]


def test_a_prune_for_one_tenant_leaves_the_others_and_zero_days_keeps_a_table_forever(
    backend: str, settings_for: Callable[..., Settings]
) -> None:
    settings = settings_for(backend, retention_events_days=0.0, retention_versions_days=1.0,
                            retention_versions_keep=1)
    client = Garrison(settings, publisher=NullPublisher(), clock=FrozenClock(START))
    for tenant in ("acme", "beta"):
        for n in range(3):
            client.ingest("add", "k", {"n": n}, target="counter", tenant=tenant)
        client.run_pending(tenant, effects=False)
    later(client, 2 * DAY)

    report = client.prune(tenant="acme")

    assert report.deleted == {"acme": {"versions": 2, "effects": 0, "timers": 0, "runs": 0, "failures": 0,
                                       "pulse_slots": 0}}
    with client.db.session() as s:
        left = dict(s.execute(select(VERSIONS.c.tenant, func.count()).group_by(VERSIONS.c.tenant)).all())
        events = s.execute(select(func.count()).select_from(EVENTS)).scalar_one()
    assert left == {"acme": 1, "beta": 3} and events == 6
    assert retention.known_tenants(client.db) == ["acme", "beta"]
    client.db.dispose()


def test_bad_retention_settings_are_refused_naming_the_setting() -> None:
    for name, value in (("retention_events_days", -1.0), ("retention_batch", 0), ("retention_versions_keep", 0)):
        with pytest.raises(ConfigurationError) as refused:
            Settings(**{name: value})  # type: ignore[arg-type]
        assert refused.value.context["field"] == name
    assert Settings.from_env({"GARRISON_RETENTION_VERSIONS_DAYS": "90"}).retention_versions_days == 90.0


def test_garrison_db_prune_shows_what_would_go_then_deletes_it(client: Garrison) -> None:
    for n in range(3):
        add(client, "k", n)
    client.run_pending()
    later(client, 2 * DAY)
    env = child_env(client.settings)
    env["GARRISON_RETENTION_EFFECTS_DAYS"] = "0"  # keep the effects: only events and versions go here

    dry = CliRunner().invoke(cli, ["db", "prune", "--dry-run"], env=env)
    assert dry.exit_code == 0, dry.output
    assert "events       3" in dry.output and "versions     1" in dry.output and "would delete 4 rows" in dry.output
    assert len(rows(client, EVENTS, EVENTS.c.id)) == 3

    done = CliRunner().invoke(cli, ["db", "prune"], env=env)
    assert done.exit_code == 0, done.output
    assert "deleted 4 rows" in done.output and rows(client, EVENTS, EVENTS.c.id) == []


def test_beat_prunes_on_its_own_with_a_real_worker(
    settings_for: Callable[..., Settings], backend: str, worker: Callable[..., WorkerProcess]
) -> None:
    settings = settings_for(backend, retention_interval=0.5, retention_events_days=1.0, retention_effects_days=1.0)
    past = Garrison(settings, publisher=NullPublisher(), clock=FrozenClock(datetime.now(UTC) - 3 * DAY))
    for n in range(5):
        past.ingest("add", "k", {"n": n}, target="counter")
    past.run_pending()
    past.db.dispose()
    client = Garrison(settings)
    assert len(rows(client, EVENTS, EVENTS.c.id)) == 5

    worker(settings, beat=True)

    wait_until(lambda: rows(client, EVENTS, EVENTS.c.id) == [] and rows(client, EFFECTS, EFFECTS.c.id) == [],
               timeout=60, what="beat's garrison.prune to delete the old events and done effects")
    assert client.state("counter", "k")["count"] == 5
    client.db.dispose()


def test_every_retention_statement_can_find_its_rows_through_an_index_on_postgresql(
    backend: str, client: Garrison
) -> None:
    if backend != "postgres":
        pytest.skip("EXPLAIN plans are PostgreSQL's")
    tenant = client.settings.tenant
    statements = {rule: find(tenant, START, 1000) for rule, find in retention.FINDERS.items()}
    statements["versions"] = retention.versions_walk(tenant, [7, "k", "counter", 3], 1000)
    assert set(statements) == set(retention.RULES)
    with client.db.engine.connect() as conn:
        conn.execute(text("SET enable_seqscan = off"))  # tiny tables: ask whether an index path exists at all
        for rule, statement in statements.items():
            compiled = statement.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
            plan = json.dumps(conn.execute(text(f"EXPLAIN (FORMAT JSON) {compiled}")).scalar_one())
            assert "Seq Scan" not in plan and "Index" in plan, f"{rule}: {plan}"


def test_stats_show_each_tables_size_and_the_oldest_row_its_retention_rule_keeps(
    backend: str, client: Garrison
) -> None:
    for n in range(3):
        add(client, "k", n)
    client.run_pending(effects=False)
    later(client, 2 * DAY)
    add(client, "k", 9)
    client.run_pending(effects=False)
    client.prune()
    if backend == "postgres":
        with client.db.engine.begin() as conn:
            conn.execute(text("ANALYZE"))  # row counts are the planner's estimates there

    stats = collect_stats(client)

    tables = {t.table: t for t in stats.tables}
    events = tables["garrison_events"]
    assert (events.rule, events.window_days, events.oldest, events.rows) == ("events", 1.0, START + 2 * DAY, 1)
    assert events.bytes is None or events.bytes > 0
    assert tables["garrison_state_versions"].oldest == START                 # the last 2 before the window
    assert tables["garrison_streams"].rule is None and tables["garrison_streams"].rows == 1
    shown = CliRunner().invoke(cli, ["stats"], env=child_env(client.settings))
    assert shown.exit_code == 0, shown.output
    assert "Storage" in shown.output and "garrison_events" in shown.output and "1 days" in shown.output
