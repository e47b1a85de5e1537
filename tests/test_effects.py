"""Effects (listeners, commands, steps) as their seeds run them: one entity's effects one after another,
in the order of the versions that made them (casern runs listeners in order; go-state feeds commands
back in order), unless the automation says ``effects="parallel"``; and never started twice while alive:
a running effect beats a heartbeat, and one lost with its killed worker is started again soon."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from garrison import Garrison, Settings
from garrison.models import EFFECTS
from tests.harness import WorkerProcess, wait_until

APPS = ("tests.apps.counter", "tests.apps.spread")


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _effects(client: Garrison, automation: str) -> list[Any]:
    with client.db.session() as s:
        return list(s.execute(select(EFFECTS.c.id, EFFECTS.c.status, EFFECTS.c.attempts)
                              .where(EFFECTS.c.automation == automation).order_by(EFFECTS.c.id)))


def test_one_entitys_listeners_run_in_the_order_of_its_versions_across_a_fleet(
    settings_for: Callable[..., Settings], backend: str, worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    settings = settings_for(backend, automations=APPS)
    log = tmp_path / "listener.log"
    env = {"GARRISON_TEST_LISTENER_LOG": str(log), "GARRISON_TEST_SLOW_LISTENER": "0.02"}
    worker(settings, env=env, concurrency=2)
    worker(settings, env=env, concurrency=2)
    client = Garrison(settings)
    try:
        for n in range(1, 41):
            client.ingest("add", "burst", {"n": n}, target="counter")
        wait_until(lambda: len(_lines(log)) >= 40, timeout=90, what="40 listeners")
        assert [line["version"] for line in _lines(log)] == list(range(1, 41))
    finally:
        client.db.dispose()


def test_a_failing_listener_holds_its_entitys_next_ones_back_unless_effects_run_in_parallel(
    settings_for: Callable[..., Settings], backend: str, worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    settings = settings_for(backend, automations=APPS)
    log = tmp_path / "listener.log"
    blocker = tmp_path / "mail-down"
    blocker.touch()
    worker(settings, env={"GARRISON_TEST_LISTENER_LOG": str(log)}, concurrency=2)
    client = Garrison(settings)
    try:
        for name in ("counter", "spread"):
            client.ingest("add", "k", {"n": 1, "blocker": str(blocker)}, target=name)
            client.ingest("add", "k", {"n": 2}, target=name)
        def retried(automation: str) -> bool:  # each first listener fails and retries (1 s, then 2 s...)
            found = _effects(client, automation)
            return len(found) == 2 and found[0].attempts >= 2

        def done(automation: str, index: int) -> bool:
            found = _effects(client, automation)
            return len(found) == 2 and found[index].status == "done"

        wait_until(lambda: retried("counter") and retried("spread"), timeout=60, what="the first listeners to retry")
        wait_until(lambda: done("spread", 1), what="spread's second listener")
        assert not done("counter", 1)  # ordered: it waits behind the failing one
        blocker.unlink()
        wait_until(lambda: all(done(a, i) for a in ("counter", "spread") for i in (0, 1)), timeout=60,
                   what="every listener done")
        versions = [line["version"] for line in _lines(log)]
        assert sorted(versions) == [1, 1, 2, 2]  # each listener once, for counter and for spread
    finally:
        client.db.dispose()


def test_a_long_listener_is_never_started_twice_while_it_runs(
    settings_for: Callable[..., Settings], backend: str, worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    # The relay would re-dispatch an effect dispatched a second ago; the heartbeat says it is alive.
    settings = settings_for(backend, automations=APPS, effect_heartbeat=0.5, effect_stall_after=2.0,
                            effect_redispatch_after=1.0)
    log = tmp_path / "listener.log"
    worker(settings, beat=True, env={"GARRISON_TEST_LISTENER_LOG": str(log), "GARRISON_TEST_SLOW_LISTENER": "5"})
    client = Garrison(settings)
    try:
        client.ingest("add", "slow", {"n": 1}, target="counter")
        wait_until(lambda: _lines(log), timeout=60, what="the slow listener to finish")
        wait_until(lambda: _effects(client, "counter")[0].status == "done", what="the effect done")
        assert len(_lines(log)) == 1
        assert _effects(client, "counter")[0].attempts == 1
    finally:
        client.db.dispose()


def test_a_listener_lost_with_its_killed_worker_is_started_again_by_the_relay(
    settings_for: Callable[..., Settings], backend: str, worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    settings = settings_for(backend, automations=APPS, effect_heartbeat=0.5, effect_stall_after=2.0)
    log = tmp_path / "listener.log"
    doomed = worker(settings, env={"GARRISON_TEST_LISTENER_LOG": str(log), "GARRISON_TEST_SLOW_LISTENER": "60"})
    client = Garrison(settings)
    try:
        client.ingest("add", "lost", {"n": 1}, target="counter")
        wait_until(lambda: _effects(client, "counter") and _effects(client, "counter")[0].status == "running",
                   what="the listener to be running")
        doomed.kill()
        worker(settings, beat=True, env={"GARRISON_TEST_LISTENER_LOG": str(log)})
        wait_until(lambda: _lines(log), timeout=60, what="the listener to run again on the new worker")
        wait_until(lambda: _effects(client, "counter")[0].status == "done", what="the effect done")
        assert [line["version"] for line in _lines(log)] == [1]
    finally:
        client.db.dispose()
