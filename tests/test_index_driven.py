"""Periodic work finds what is due through an index, never by scanning every key (guarantee 11): with a
million idle keys present (their streams, cursors, entities and fired timers), a relay pass publishes
exactly the keys, effects and timers that are due, and none of its statements reads the tables whose size
grows with the install (streams, cursors, entities, versions, events)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import event, text

from garrison import FrozenClock, Garrison, Settings
from garrison.core.publisher import EffectAbout
from garrison.core.relay import relay

START = datetime.fromisoformat("2026-06-01T00:00:00+00:00")
GROWING = ("garrison_streams", "garrison_cursors", "garrison_entities", "garrison_state_versions",
           "garrison_events")


class Recorder:
    def __init__(self) -> None:
        self.keys: list[tuple[str, list[str]]] = []
        self.timers: list[str] = []

    def publish_keys(self, tenant: str, keys: Sequence[str]) -> None:
        self.keys.append((tenant, list(keys)))

    def publish_waiting(self, tenant: str, keys: Sequence[str], automation: str) -> None:
        self.keys.append((tenant, list(keys)))

    def publish_effects(self, tenant: str, effect_ids: Sequence[int],
                        labels: Mapping[int, EffectAbout] | None = None) -> None:
        return None

    def publish_timers(self, tenant: str, dues: Sequence[datetime]) -> None:
        self.timers.append(tenant)

    def publish_pulse(self, tenant: str, slot_id: int, label: str) -> None:
        return None


def _idle_keys(client: Garrison, count: int) -> None:
    """``count`` keys of another tenant, all caught up, each with an entity, a version and a fired timer."""
    series = ("SELECT g AS n FROM generate_series(1, :n) AS g" if not client.db.is_sqlite else
              "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < :n) SELECT n FROM s")
    now = "CURRENT_TIMESTAMP"
    rows = {
        "garrison_streams (tenant, key, last_seq, updated_at)": f"'k' || n, 1, {now}",
        "garrison_cursors (tenant, key, processed_seq, updated_at)": f"'k' || n, 1, {now}",
        "garrison_events (tenant, key, seq, name, data, system, created_at)":
            f"'k' || n, 1, 'add', '{{}}', false, {now}",
        "garrison_entities (tenant, key, automation, state, version, cursor, created_at, updated_at, status)":
            f"'k' || n, 'counter', '{{}}', 1, 1, {now}, {now}, 'active'",
        "garrison_timers (tenant, automation, key, name, due_at, status, data, created_at)":
            f"'counter', 'k' || n, 't', {now}, 'fired', '{{}}', {now}",
    }
    statements = [f"INSERT INTO {table} SELECT 'idle', {values} FROM ({series}) AS x" for table, values in rows.items()]
    statements.append("INSERT INTO garrison_tenants (name, created_at) VALUES ('idle', CURRENT_TIMESTAMP)")
    with client.db.engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement), {"n": count})
    if not client.db.is_sqlite:
        with client.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE"))


def test_a_relay_pass_over_a_million_idle_keys_finds_exactly_the_due_work_through_its_indexes(
    settings_for: Callable[..., Settings], backend: str
) -> None:
    settings = settings_for(backend)
    recorder = Recorder()
    clock = FrozenClock(START)
    client = Garrison(settings, publisher=recorder, clock=clock)
    try:
        _idle_keys(client, 1_000_000 if backend == "postgres" else 100_000)
        for key in ("due-1", "due-2", "due-3"):
            client.ingest("add", key, {"n": 1}, target="counter")  # published: not due yet
        recorder.keys.clear()
        clock.advance(settings.relay_after + 1)  # now their tasks look lost
        seen: list[str] = []

        def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            seen.append(statement)

        event.listen(client.db.engine, "before_cursor_execute", record)
        try:
            report = relay(client)
        finally:
            event.remove(client.db.engine, "before_cursor_execute", record)
        assert report.keys == {"default": ["due-1", "due-2", "due-3"]}
        assert recorder.keys == [("default", ["due-1", "due-2", "due-3"])]
        assert recorder.timers == []  # a million fired timers are no work
        growing = [s for s in seen if any(table in s for table in GROWING)]
        assert growing == [], growing
        relay(client)  # published just now: not due again
        assert recorder.keys == [("default", ["due-1", "due-2", "due-3"])]
    finally:
        client.db.dispose()


def test_a_key_pending_for_long_is_found_again_after_each_relay_interval(offline: Garrison) -> None:
    recorder = Recorder()
    clock = FrozenClock(START)
    client = Garrison(offline.settings, publisher=recorder, clock=clock)
    try:
        client.ingest("add", "k", {"n": 1}, target="counter")
        assert recorder.keys == [("default", ["k"])]
        clock.advance(offline.settings.relay_after / 2)
        assert relay(client).keys == {}
        clock.advance(offline.settings.relay_after)
        assert relay(client).keys == {"default": ["k"]}
        client.run_pending()
        clock.advance(offline.settings.relay_after * 3)
        assert relay(client).keys == {}  # applied: its pending row is gone
    finally:
        client.db.dispose()


def test_a_publish_is_skipped_while_a_task_for_the_key_is_on_its_way(offline: Garrison) -> None:
    recorder = Recorder()
    client = Garrison(offline.settings, publisher=recorder)
    try:
        for n in range(1, 6):
            client.ingest("add", "k", {"n": n}, target="counter")
        client.ingest("add", "other", {"n": 1}, target="counter")
        assert recorder.keys == [("default", ["k"]), ("default", ["other"])]  # one task per key
        client.run_pending()
        client.ingest("add", "k", {"n": 6}, target="counter")  # applied: the next event publishes again
        assert recorder.keys[-1] == ("default", ["k"])
        assert client.state("counter", "k")["count"] == 5  # type: ignore[index]
    finally:
        client.db.dispose()


def test_a_new_tenant_gets_its_code_pulses_on_the_beats_next_tick(offline: Garrison) -> None:
    from garrison.pulses.beat import PulseBeat
    client = Garrison(offline.settings.with_overrides(automations=("tests.apps.inquiry",)), clock=FrozenClock(START),
                      publisher=Recorder())
    try:
        beat = PulseBeat(client)
        beat.tick()
        assert [p.name for p in client.pulses(tenant="acme")] == []
        client.ingest("initialInquiry", "q-1", {"name": "ana", "when": 0}, tenant="acme", target="inquiry")
        client.clock.advance(1)  # type: ignore[attr-defined]
        beat.tick()  # one tick later, not thirty seconds
        assert [p.name for p in client.pulses(tenant="acme")] != []
    finally:
        client.db.dispose()

