"""``garrison.tasks.install(app)``: garrison's tasks in a user's existing Celery app, refused (naming the
setting) when the app cannot run them, and run by that app's worker on that app's broker."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from celery import Celery

from garrison.client import Garrison
from garrison.config import Settings
from garrison.errors import ConfigurationError
from garrison.tasks import install
from tests.apps.counter import counter
from tests.harness import ROOT, WorkerProcess, child_env, wait_until


def app(**conf: object) -> Celery:
    made = Celery("proj", broker="redis://127.0.0.1:6379/0", set_as_current=False)
    made.conf.update({"worker_send_task_events": True, **conf})
    return made


@pytest.mark.parametrize(("setting", "value"), [
    ("accept_content", ["json", "pickle"]),
    ("task_serializer", "pickle"),
    ("task_always_eager", True),
    ("worker_send_task_events", False),
])
def test_an_app_garrison_cannot_run_in_is_refused_naming_the_setting(setting: str, value: object) -> None:
    user = app(**{setting: value})
    with pytest.raises(ConfigurationError) as info:
        install(user)
    assert f"app.conf.{setting} = {value!r}; garrison needs" in info.value.message
    assert user.conf.task_routes is None  # nothing was changed


def test_annotations_that_turn_late_acks_off_and_a_short_visibility_timeout_are_refused() -> None:
    with pytest.raises(ConfigurationError) as info:
        install(app(task_annotations={"*": {"acks_late": False}}))
    assert "task_annotations turns acks_late off for garrison." in info.value.message
    with pytest.raises(ConfigurationError) as info:
        install(app(broker_transport_options={"visibility_timeout": 60}))
    assert "visibility_timeout'] = 60; garrison needs more than GARRISON_TIMER_HORIZON" in info.value.message
    with pytest.raises(ConfigurationError) as info:
        install(app(beat_scheduler="django_celery_beat.schedulers:DatabaseScheduler"))
    assert "install(app, beat=False)" in info.value.message


def test_install_registers_garrisons_tasks_with_their_options_and_leaves_the_apps_own_alone() -> None:
    user = app()

    @user.task(name="proj.hello")
    def hello() -> str:
        return "hi"

    install(user)
    names = {n for n in user.tasks if n.startswith("garrison.")}
    assert {"garrison.process", "garrison.effect", "garrison.timers", "garrison.pulse", "garrison.relay"} <= names
    for name in names:
        task = user.tasks[name]
        assert task.acks_late and task.reject_on_worker_lost and task.serializer == "json"
    assert not user.tasks["proj.hello"].acks_late  # the user's own task keeps the app's default
    assert user.conf.beat_scheduler == "garrison.tasks.beat:GarrisonScheduler"
    assert "garrison-relay" in user.conf.beat_schedule
    assert user.conf.task_routes["garrison.*"] == {"queue": "garrison"}


@pytest.mark.worker
def test_the_users_worker_runs_garrisons_tasks_on_the_users_broker(
    backend: str, settings_for: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = settings_for(backend)
    log = tmp_path / "userapp.log"
    # garrison's own broker setting points nowhere: only the user's app can carry the work.
    env = child_env(settings, PROJ_BROKER_URL=settings.broker_url, GARRISON_BROKER_URL="redis://127.0.0.1:9/0")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.apps.userapp", "worker", "--loglevel", "INFO",
         "--concurrency", "2", "--hostname", f"user-{backend}@%h", "--without-mingle", "--without-gossip"],
        cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    worker = WorkerProcess(proc, log)
    client = Garrison(settings)
    try:
        wait_until(lambda: " ready." in worker.output or proc.poll() is not None, timeout=60, what="the user's worker")
        assert proc.poll() is None, worker.output
        assert "garrison.process" in worker.output  # listed among the worker's tasks
        counter.send("add", "installed-1", {"n": 1}, client=client)
        wait_until(lambda: client.state("counter", "installed-1"), what="the user's worker to apply the event")
        # The listener ran as a garrison.effect task that the worker published through the user's app.
        wait_until(lambda: _effects_done(client, "installed-1"), what="the listener's effect to be performed")
    finally:
        worker.kill()
        client.db.dispose()


def _effects_done(client: Garrison, key: str) -> bool:
    from garrison.ops.inspect import inspect_key

    effects = inspect_key(client, key).effects
    return bool(effects) and all(e.status == "done" for e in effects)
