"""``garrison stats``: one tenant's figures read from SQL: events per second over a window, messages waiting
past their key's cursor (and for how long), timers overdue and coming due, effects not done, failures per
automation and pulse slots fanning out; never another tenant's rows."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner

from garrison.cli import cli
from garrison.client import Garrison
from garrison.clock import FrozenClock
from garrison.config import Settings
from garrison.core.publisher import NullPublisher
from garrison.core.runner import Runner
from garrison.errors import ValidationError
from garrison.ops.stats import collect_stats
from garrison.pulses.fanout import open_slot, save_schedule
from garrison.pulses.schedules import PulseSchedule
from tests.apps.counter import counter

AUTOMATIONS = ("tests.apps.counter", "tests.apps.journeys")


@dataclass
class Scene:
    client: Garrison
    clock: FrozenClock
    start: datetime
    slot_id: int


@pytest.fixture
def scene(backend: str, settings_for: Callable[..., Settings]) -> Iterator[Scene]:
    """At ``start`` (140 s ago by the real clock): three counter keys applied, effects left pending, a
    failure, three journey timers (30 s, 150 s, 10 min out). At start + 130 s: one more counter change
    (its effect dispatched) and three events left unapplied on two keys. At start + 140 s: a pulse slot
    opened over the counter's entities. Tenant ``other`` has two unapplied events of its own."""
    settings = settings_for(backend, automations=AUTOMATIONS)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=140)
    clock = FrozenClock(start)
    client = Garrison(settings, publisher=NullPublisher(), clock=clock)
    for key in ("a", "b", "c"):
        counter.send("add", key, {"n": 1}, client=client)
    counter.send("add", "f1", {"boom": True}, client=client)
    client.ingest("test/start", "w1", {"id": 1, "timeout": "30s"})
    client.ingest("test/nap", "s1", {"for": "10m"})
    client.ingest("test/nap", "s2", {"for": "150s"})
    client.run_pending(effects=False)

    clock.advance(130)
    counter.send("add", "a", {"n": 2}, client=client)
    Runner(client).run_keys("default", ["a"])
    for key in ("d", "e", "d"):
        counter.send("add", key, {"n": 3}, client=client)
    for key in ("z", "z"):
        counter.send("add", key, {"n": 4}, tenant="other", client=client)

    clock.advance(10)
    schedule = save_schedule(client.db, "default", PulseSchedule("tick", "counter", "add", every="1m"), clock.now())
    opened = open_slot(client.db, "default", schedule, clock.now(), clock.now())
    assert opened is not None
    yield Scene(client, clock, start, opened.id)
    client.db.dispose()


def test_stats_count_the_window_the_backlog_timers_effects_failures_and_pulses_of_one_tenant(scene: Scene) -> None:
    stats = collect_stats(scene.client, window=60)

    assert stats.tenant == "default" and stats.at == scene.start + timedelta(seconds=140)
    assert (stats.events, stats.events_per_second) == (4, 4 / 60)  # a(n=2), d, e, d: the rest is older
    assert (stats.pending_messages, stats.pending_keys, stats.oldest_pending_age) == (3, 2, 10.0)
    assert (stats.timers_pending, stats.timers_overdue, stats.timers_due_soon) == (3, 1, 1)
    assert (stats.effects_pending, stats.effects_dispatched, stats.effects_failed) == (3, 1, 0)
    assert stats.failures == 1
    [pulse] = stats.pulses
    assert (pulse.id, pulse.schedule, pulse.done, pulse.total) == (scene.slot_id, "tick", 0, 3)

    per = {a.automation: a for a in stats.automations}
    assert (per["counter"].entities, per["counter"].changes, per["counter"].failures) == (3, 1, 1)
    assert (per["counter"].effects_pending, per["counter"].effects_dispatched) == (3, 1)
    assert (per["waiter"].entities, per["waiter"].timers_pending) == (1, 1)
    assert (per["sleeper"].entities, per["sleeper"].timers_pending) == (2, 2)
    assert per["stepper"].entities == 0  # registered, nothing stored yet: still listed

    # A wider window takes in the first events (and the state changes they made).
    wide = collect_stats(scene.client, window=600)
    assert wide.events == 11 and {a.automation: a.changes for a in wide.automations}["counter"] == 4

    other = collect_stats(scene.client, tenant="other", window=60)
    assert (other.events, other.pending_messages, other.pending_keys) == (2, 2, 1)
    assert (other.timers_pending, other.effects_pending, other.failures, other.pulses) == (0, 0, 0, [])
    assert all(a.entities == 0 for a in other.automations)


def test_applying_the_backlog_and_firing_the_timers_shows_in_the_next_stats(scene: Scene) -> None:
    scene.client.run_pending()  # applies d, e, fires the overdue timer, performs every effect
    stats = collect_stats(scene.client, window=60)
    assert (stats.pending_messages, stats.pending_keys, stats.oldest_pending_age) == (0, 0, None)
    assert (stats.timers_pending, stats.timers_overdue) == (2, 0)
    assert (stats.effects_pending, stats.effects_dispatched) == (0, 0)
    assert {a.automation: a.entities for a in stats.automations}["counter"] == 5


def test_a_window_that_is_not_positive_is_refused_naming_it(scene: Scene) -> None:
    with pytest.raises(ValidationError) as info:
        collect_stats(scene.client, window=0)
    assert info.value.field == "window"


def test_the_stats_command_prints_the_figures_as_a_table_or_json(scene: Scene) -> None:
    env = scene.client.settings.as_env()
    shown = CliRunner(env=env).invoke(cli, ["stats"], catch_exceptions=False)
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert lines[0].startswith("tenant 'default' at ") and lines[0].endswith("UTC, over the last 1m")
    assert lines[1] == "events    4 ingested (0.07/s)"
    assert lines[2].startswith("pending   3 messages on 2 keys, the oldest waiting ")
    assert lines[3] == "timers    3 pending: 1 overdue, 1 due in the next 1m"
    assert lines[4] == "effects   3 pending, 1 dispatched, 0 failed"
    assert lines[5] == "failures  1 waiting for a retry (garrison retry --all)"
    assert lines[6] == "pulses    1 running"
    table = shown.stdout.split("Automations\n")[1].split("\n\n")[0].splitlines()
    assert table[0].split() == ["AUTOMATION", "ENTITIES", "CHANGES/1m", "FAILURES", "HALTED", "BEHIND", "EFFECTS",
                                "PENDING", "DISPATCHED", "FAILED", "TIMERS"]
    assert ["counter", "3", "1", "1", "0", "0", "3", "1", "0", "0"] in [row.split() for row in table[1:]]
    assert "Pulses running" in shown.stdout and f"  {scene.slot_id}  " in shown.stdout

    as_json = CliRunner(env=env).invoke(cli, ["stats", "--json", "--window", "10m", "--tenant", "other"])
    found = json.loads(as_json.stdout)
    assert (found["tenant"], found["window"], found["events"], found["pending_messages"]) == ("other", 600.0, 2, 2)
    assert found["events_per_second"] == round(2 / 600, 3) and found["pulses"] == []

    bare = json.loads(CliRunner(env=env).invoke(cli, ["stats", "--json", "--window", "30"]).stdout)
    assert bare["window"] == 30.0  # a bare number is seconds
    refused = CliRunner(env=env).invoke(cli, ["stats", "--window", "soon"])
    assert refused.exit_code == 2 and refused.stderr.startswith("error: window 'soon' is not a duration")
    assert refused.stderr.rstrip().endswith("(field: window)")


def test_stats_and_inspect_say_so_when_messages_wait_past_the_relay_delay_and_no_beat_runs(scene: Scene) -> None:
    from garrison.core.leases import acquire, new_owner
    from garrison.pulses.beat import FLEET, LEASE

    stats = collect_stats(scene.client, window=60)
    assert stats.beat is not None and not stats.beat.running
    assert stats.stalled is not None and stats.stalled.startswith("no beat is running")
    assert "has waited 10.0s (more than GARRISON_RELAY_AFTER=1s)" in stats.stalled
    env = scene.client.settings.as_env()
    shown = CliRunner(env=env).invoke(cli, ["stats"], catch_exceptions=False)
    assert "\nwarning   no beat is running, and the oldest pending message has waited" in shown.stdout
    assert json.loads(CliRunner(env=env).invoke(cli, ["stats", "--json"]).stdout)["stalled"].startswith("no beat")
    inspected = CliRunner(env=env).invoke(cli, ["inspect", "d"], catch_exceptions=False)
    assert "\nwarning: no beat is running" in inspected.stdout

    # With a beat holding its lease, the relay is on it: nothing to warn about.
    acquire(scene.client.db, FLEET, LEASE, new_owner("beat"), 600, scene.clock.now())
    stats = collect_stats(scene.client, window=60)
    assert stats.beat is not None and stats.beat.running and stats.stalled is None
    assert "warning" not in CliRunner(env=env).invoke(cli, ["stats"]).stdout
    assert "warning" not in CliRunner(env=env).invoke(cli, ["inspect", "d"]).stdout
