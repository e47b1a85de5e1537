"""A user's own Celery app (``celery -A tests.apps.userapp worker``) with garrison's tasks installed into it.
Its broker is PROJ_BROKER_URL, not GARRISON_BROKER_URL: garrison must publish and consume through it."""

from __future__ import annotations

import os

from celery import Celery

import garrison.tasks
from garrison.config import Settings
from garrison.tasks.app import celery_config

broker = os.environ["PROJ_BROKER_URL"]
app = Celery("proj", broker=broker, set_as_current=False)
app.conf.update(worker_send_task_events=True, worker_hijack_root_logger=False)
if broker.startswith("filesystem://"):  # kombu's folder transport, where garrison's embedded default keeps it
    app.conf.broker_transport_options = celery_config(Settings.from_env(broker_url=broker))["broker_transport_options"]
garrison.tasks.install(app)


@app.task(name="proj.hello")
def hello() -> str:
    return "hello from the user's own task"
