"""The Celery app garrison's workers and beat run, configured from :class:`Settings`.

JSON only: pickle is neither sent nor accepted. Task events are on, so Flower sees every garrison task
under its readable name (``garrison.process``, ``garrison.effect``, ``garrison.relay``).
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from garrison.config import Settings

QUEUE = "garrison"


def celery_config(settings: Settings) -> dict[str, Any]:
    broker_options: dict[str, Any] = {}
    if settings.broker_url.startswith("filesystem://"):
        folder = settings.broker_folder.resolve()
        for sub in ("data", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        broker_options = {
            "data_folder_in": str(folder / "data"),
            "data_folder_out": str(folder / "data"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
            "control_folder": str(folder / "control"),
            # The folder is listed this often when idle (kombu's default is 1 s: a second per hop).
            "polling_interval": 0.1,
        }
    elif settings.broker_url.startswith(("redis://", "rediss://")):
        broker_options = {"visibility_timeout": settings.broker_visibility_timeout}
    return {
        "broker_url": settings.broker_url,
        "broker_transport_options": broker_options,
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        "task_ignore_result": True,
        "result_backend": None,
        "task_default_queue": QUEUE,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 4,
        # ETA tasks (timers) are checked this often; Celery's default of 1 s would make timers late.
        "worker_timer_precision": 0.1,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_hijack_root_logger": False,
        "beat_scheduler": "garrison.tasks.beat:GarrisonScheduler",
        "beat_max_loop_interval": 1.0,
        "beat_schedule": {
            "garrison-relay": {"task": "garrison.relay", "schedule": settings.relay_interval},
        },
        "timezone": "UTC",
        "enable_utc": True,
    }


def create_celery(settings: Settings) -> Celery:
    app = Celery("garrison", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app
