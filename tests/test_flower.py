"""Flower against a real worker: garrison's tasks show under their readable names with the tenant and keys
in their arguments, /metrics serves Prometheus figures for them, and basic auth (from the environment, as
the README says to run it) keeps the UI and API closed to anyone without the password.

PostgreSQL + Redis only: Flower follows the workers through the broker's event exchange, which kombu's
filesystem transport does not have."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from garrison.client import Garrison
from garrison.config import Settings
from tests.apps.counter import counter
from tests.harness import ROOT, WorkerProcess, child_env, wait_until

USER, PASSWORD = "ops", "s3cret-pass"
FlowerStarter = Callable[..., str]


@pytest.fixture
def flower(tmp_path: Path) -> Iterator[FlowerStarter]:
    """Start ``celery -A garrison.tasks flower`` on a free port; returns its base URL. Killed at teardown."""
    started: list[WorkerProcess] = []

    def start(settings: Settings, **env: str) -> str:
        log = tmp_path / f"flower{len(started)}.log"
        args = [sys.executable, "-m", "celery", "-A", "garrison.tasks", "flower", "--port=0", "--address=127.0.0.1"]
        proc = subprocess.Popen(
            args, cwd=ROOT, env=child_env(settings, **env), stdout=log.open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        handle = WorkerProcess(proc, log)
        started.append(handle)

        def listening() -> str | None:
            if proc.poll() is not None:
                raise AssertionError(f"flower exited with {proc.returncode}:\n{handle.output}")
            found = re.search(r"Visit me at (http://127\.0\.0\.1:\d+)", handle.output)
            return found.group(1) if found else None

        url: str = wait_until(listening, timeout=60, what="flower to listen")
        wait_until(lambda: _get(f"{url}/healthcheck").status_code == 200, timeout=30, what="flower to answer")
        return url

    yield start
    for handle in started:
        handle.kill()


def _get(url: str, auth: tuple[str, str] | None = None) -> httpx.Response:
    try:
        return httpx.get(url, auth=auth, timeout=5)
    except httpx.TransportError:
        return httpx.Response(599)


def _tasks(url: str) -> dict[str, Any]:
    response = _get(f"{url}/api/tasks", auth=(USER, PASSWORD))
    assert response.status_code == 200, response.text
    tasks: dict[str, Any] = response.json()
    return tasks


def test_flower_with_basic_auth_shows_garrison_tasks_by_name_with_tenant_and_key_and_serves_metrics(
    settings_for: Callable[..., Settings], worker: Callable[..., WorkerProcess], flower: FlowerStarter
) -> None:
    settings = settings_for("postgres")
    worker(settings)
    url = flower(settings, FLOWER_BASIC_AUTH=f"{USER}:{PASSWORD}")

    # Closed without the password (UI and API), open with it.
    assert _get(f"{url}/api/tasks").status_code == 401
    assert _get(f"{url}/").status_code == 401
    assert _get(f"{url}/api/tasks", auth=(USER, "wrong")).status_code == 401
    assert _get(f"{url}/api/workers", auth=(USER, PASSWORD)).status_code == 200

    client = Garrison(settings)
    try:
        counter.send("add", "flower-key-7", {"n": 1}, tenant="acme", client=client)
        wait_until(lambda: client.state("counter", "flower-key-7", tenant="acme"), what="the worker to apply it")
    finally:
        client.db.dispose()

    def succeeded(name: str) -> list[dict[str, Any]]:
        return [t for t in _tasks(url).values() if t["name"] == name and t["state"] == "SUCCESS"]

    [process] = wait_until(lambda: succeeded("garrison.process"), timeout=30, what="flower to see garrison.process")
    assert "tenant=acme" in process["args"] and "keys=[flower-key-7]" in process["args"]
    assert process["worker"].startswith("w0-")
    # The counter's listener ran as an effect task, named as such, with its tenant, effect id, automation, key.
    [effect] = wait_until(lambda: succeeded("garrison.effect"), timeout=30, what="flower to see garrison.effect")
    assert re.fullmatch(r"tenant=acme effect=\d+ counter key=flower-key-7", effect["args"])
    info = _get(f"{url}/api/task/info/{process['uuid']}", auth=(USER, PASSWORD)).json()
    assert info["name"] == "garrison.process" and info["result"] == "{'messages': 1, 'failed': 0}"

    def metric() -> float:
        text = _get(f"{url}/metrics").text
        found = re.search(
            r'^flower_events_total\{task="garrison\.process",type="task-succeeded",worker="w0-[^"]+"\} (\S+)$',
            text, re.MULTILINE,
        )
        return float(found.group(1)) if found else 0.0

    assert wait_until(metric, what="flower_events_total for garrison.process") >= 1
    # /metrics and /healthcheck are not behind basic auth (Prometheus scrapes them): keep the port private.
    assert _get(f"{url}/metrics").status_code == 200


def test_a_failed_message_shows_as_a_failed_task_in_flower_and_a_retried_effect_keeps_readable_arguments(
    settings_for: Callable[..., Settings], worker: Callable[..., WorkerProcess], flower: FlowerStarter
) -> None:
    from tests.apps.console import shop

    settings = settings_for("postgres", automations=("tests.apps.counter", "tests.apps.console"),
                            effect_max_retries=1)
    proc = worker(settings)
    url = flower(settings, FLOWER_BASIC_AUTH=f"{USER}:{PASSWORD}")
    client = Garrison(settings)
    try:
        counter.send("add", "bad-1", {"n": 1, "boom": True}, tenant="acme", client=client)
        shop.send("placed", "o-1", {"total": 3, "listener_fails": True}, tenant="acme", client=client)
        wait_until(lambda: client.failures(tenant="acme"), what="the failure recorded")
    finally:
        client.db.dispose()

    def failed(name: str) -> list[dict[str, Any]]:
        return [t for t in _tasks(url).values() if t["name"] == name and t["state"] == "FAILURE"]

    # The task that applied the failed message is a failure, and says which failure to look at.
    [process] = wait_until(lambda: failed("garrison.process"), timeout=30, what="flower to see a failed process")
    assert "keys=[bad-1]" in process["args"]
    assert "1 of 1 messages failed" in process["exception"] and "boom for 1" in process["exception"]
    assert "counter key=bad-1" in process["exception"]

    def failed_events() -> float:
        found = re.search(r'^flower_events_total\{task="garrison\.process",type="task-failed",[^}]*\} (\S+)$',
                          _get(f"{url}/metrics").text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    assert wait_until(failed_events, what="flower to count the task-failed event") >= 1
    # The worker's line for the failed handler names the exception.
    assert re.search(r"handler failed \[tenant=acme automation=counter key=bad-1 event_id=\d+ "
                     r"error=ValueError\('boom for 1'\)\]", proc.output), proc.output

    # The listener failed, was retried once, then failed for good: its arguments stayed readable.
    [effect] = wait_until(lambda: failed("garrison.effect"), timeout=60, what="the effect to fail for good")
    assert effect["retries"] == 1
    assert re.fullmatch(r"tenant=acme effect=\d+ shop key=o-1", effect["args"]), effect["args"]
