"""A fleet that is not uniform (guarantee 9): during a rolling deploy, or with one worker started with the
wrong environment, workers hold different automations. No worker consumes a message on behalf of an
automation it does not have; every automation applies every message meant for it exactly once, in order,
whichever worker took the key first; a worker that cannot load its automations refuses to start."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from garrison import Garrison, NullPublisher, Settings
from garrison.cli import cli
from garrison.core import fleet
from garrison.models import ENTITIES, PENDING
from tests.apps import deploy_v1, deploy_v2
from tests.harness import ROOT, WorkerProcess, child_env, wait_until

V1 = "tests.apps.deploy_v1"
V2 = "tests.apps.deploy_v2"


def _seen(client: Garrison, automation: str, key: str) -> list[int]:
    state = client.state(automation, key)
    return [] if state is None else list(state["seen"])


def _entity(client: Garrison, automation: str, key: str) -> Any:
    with client.db.session() as s:
        return s.execute(select(ENTITIES.c.status, ENTITIES.c.cursor).where(
            ENTITIES.c.tenant == client.settings.tenant, ENTITIES.c.automation == automation, ENTITIES.c.key == key,
        )).first()


def _needs(client: Garrison, key: str) -> str | None:
    with client.db.session() as s:
        return s.execute(select(PENDING.c.needs).where(PENDING.c.tenant == client.settings.tenant,
                                                       PENDING.c.key == key)).scalar()


def test_a_process_without_an_automation_holds_its_messages_until_one_that_has_it_catches_up(
    settings_for: Callable[..., Settings], backend: str
) -> None:
    settings = settings_for(backend, automations=())
    old = Garrison(settings, automations=[deploy_v1.ledger, deploy_v1.legacy], publisher=NullPublisher())
    new = Garrison(settings, automations=[deploy_v2.ledger, deploy_v2.audit], publisher=NullPublisher())
    try:
        now = old.clock.now()
        fleet.register(old.db, list(old.registry), "old", now)
        fleet.register(new.db, list(new.registry), "new", now)
        for n in range(1, 6):
            old.ingest("app/moved", "k", {"n": n})

        old.run_pending()  # the old version took the key first: it has ledger and legacy, not audit
        assert _seen(old, "ledger", "k") == _seen(old, "legacy", "k") == [1, 2, 3, 4, 5]
        assert _seen(old, "audit", "k") == []
        assert tuple(_entity(old, "audit", "k")) == ("behind", 0)
        assert _needs(old, "k") == "audit"

        new.run_pending()  # the new version catches audit up from the log; ledger applies nothing twice
        assert _seen(new, "audit", "k") == [1, 2, 3, 4, 5]
        assert _seen(new, "ledger", "k") == [1, 2, 3, 4, 5]
        assert tuple(_entity(new, "audit", "k")) == ("active", 5)
        assert _needs(new, "k") is None

        for n in range(6, 9):
            new.ingest("app/moved", "k", {"n": n})
        new.run_pending()  # now the new version takes the key first: legacy waits for the old one
        assert _seen(new, "ledger", "k") == _seen(new, "audit", "k") == list(range(1, 9))
        assert _seen(new, "legacy", "k") == [1, 2, 3, 4, 5]
        assert _needs(new, "k") == "legacy"

        old.run_pending()
        for automation in ("ledger", "legacy", "audit"):
            assert _seen(old, automation, "k") == list(range(1, 9)), automation
        assert _needs(old, "k") is None
    finally:
        old.db.dispose()
        new.db.dispose()


def test_retiring_an_automation_releases_the_keys_that_waited_for_it(
    settings_for: Callable[..., Settings], backend: str
) -> None:
    settings = settings_for(backend, automations=())
    new = Garrison(settings, automations=[deploy_v2.ledger, deploy_v2.audit], publisher=NullPublisher())
    try:
        fleet.register(new.db, [deploy_v1.ledger, deploy_v1.legacy], "old", new.clock.now())  # an old worker
        new.ingest("app/moved", "k", {"n": 1})
        new.run_pending()
        assert _needs(new, "k") == "legacy"
        result = CliRunner().invoke(cli, ["automations", "list"], env=settings.as_env())
        assert result.exit_code == 0 and "legacy" in result.output and "live" in result.output, result.output

        result = CliRunner().invoke(cli, ["automations", "retire", "legacy"], env=settings.as_env())
        assert result.exit_code == 0, result.output
        assert _needs(new, "k") is None
        new.ingest("app/moved", "k", {"n": 2})
        new.run_pending()  # legacy is no longer waited for: nothing holds the key
        assert _seen(new, "ledger", "k") == [1, 2]
        assert _needs(new, "k") is None
        result = CliRunner().invoke(cli, ["automations", "retire", "nope"], env=settings.as_env())
        assert result.exit_code == 1 and "no automation named 'nope'" in result.output
    finally:
        new.db.dispose()


def test_two_versions_of_a_fleet_with_workers_killed_and_restarted_apply_every_message_once_in_order(
    settings_for: Callable[..., Settings], backend: str, worker: Callable[..., WorkerProcess]
) -> None:
    settings = settings_for(backend, automations=(V2,))
    client = Garrison(settings, automations=[deploy_v2.ledger, deploy_v2.audit])
    old_settings = settings.with_overrides(automations=(V1,))
    keys = [f"user-{i}" for i in range(6)]
    total = 30
    try:
        old = worker(old_settings)
        new = worker(settings, beat=True)  # the relay re-publishes what the killed workers took with them
        done = threading.Event()

        def feed() -> None:  # one event at a time, as a web app sends them
            for n in range(1, total + 1):
                for key in keys:
                    client.ingest("app/moved", key, {"n": n})
                time.sleep(0.02)
            done.set()

        feeder = threading.Thread(target=feed)
        feeder.start()
        wait_until(lambda: _seen(client, "ledger", keys[0]), what="the fleet to be under way")
        old.kill()  # the old version dies mid-run; its messages for legacy wait
        old = worker(old_settings)
        wait_until(lambda: len(_seen(client, "ledger", keys[-1])) >= total // 2, timeout=60,
                   what="half the events applied")
        new.kill()  # and the new one
        worker(settings, beat=True)
        feeder.join()
        expected = list(range(1, total + 1))

        def complete() -> bool:
            return all(_seen(client, a, k) == expected for a in ("ledger", "legacy", "audit") for k in keys)

        wait_until(complete, timeout=120, interval=0.25, what="every automation to apply every message")
        time.sleep(1.0)  # a few more relay rounds: nothing may be applied twice
        assert complete()
        assert old.proc.poll() is None
    finally:
        client.db.dispose()


# -- refusing to start ----------------------------------------------------------------------------


def _celery(settings: Settings, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run a Celery command of garrison.tasks to its end (it must refuse to start) and return its output."""
    log = tmp_path / "refused.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "garrison.tasks", *args], cwd=ROOT,
                                env=child_env(settings, **(env or {})), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
    return code, log.read_text()


@pytest.mark.parametrize("automations", ["", "tests.apps.no_such_module"])
def test_a_worker_or_beat_without_loadable_automations_refuses_to_start(
    settings_for: Callable[..., Settings], tmp_path: Path, automations: str
) -> None:
    settings = settings_for("sqlite")
    env = {"GARRISON_AUTOMATIONS": automations}
    code, out = _celery(settings, tmp_path, "worker", "--pool", "solo", env=env)
    assert code != 0 and "garrison: the worker cannot start" in out, out
    assert "GARRISON_AUTOMATIONS" in out or "tests.apps.no_such_module" in out
    code, out = _celery(settings, tmp_path, "beat", env=env)
    assert code != 0 and "garrison: the beat cannot start" in out, out


def test_a_worker_lists_its_automations_and_queues_when_it_starts(
    settings_for: Callable[..., Settings], worker: Callable[..., WorkerProcess]
) -> None:
    settings = settings_for("sqlite", automations=(V2,), queue="blue")
    proc = worker(settings)
    assert "garrison: automations ledger (machine), audit (machine); queue 'blue'" in proc.output, proc.output
    assert "blue.automation.audit" in proc.output  # Celery's banner lists the queues it consumes
    client = Garrison(settings, publisher=NullPublisher())
    try:
        registered = {a.name for a in fleet.list_automations(client.db)}
        assert registered == {"ledger", "audit"}
    finally:
        client.db.dispose()


def test_an_ingest_only_worker_starts_without_automations(
    settings_for: Callable[..., Settings], worker: Callable[..., WorkerProcess]
) -> None:
    settings = settings_for("sqlite", automations=(), ingest_only=True)
    proc = worker(settings)
    assert "none (GARRISON_INGEST_ONLY)" in proc.output


def test_replay_and_serve_with_no_automation_exit_non_zero(settings_for: Callable[..., Settings]) -> None:
    settings = settings_for("sqlite", automations=())
    result = CliRunner().invoke(cli, ["replay"], env=settings.as_env())
    assert result.exit_code != 0 and "no automations to replay" in result.output, result.output
    result = CliRunner().invoke(cli, ["serve"], env={**settings.as_env(), "GARRISON_API_KEYS": "acme:" + "k" * 40})
    assert result.exit_code != 0 and "no automations" in result.output, result.output
