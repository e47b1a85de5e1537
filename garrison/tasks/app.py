"""The Celery app garrison's workers and beat run, configured from :class:`Settings`.

JSON only: pickle is neither sent nor accepted. Task events are on, so Flower sees every garrison task
under its readable name (``garrison.process``, ``garrison.effect``, ``garrison.relay``).

Logging is Celery's, plus garrison's: each line carries the tenant / automation / key / event the work is
about and the Celery task it runs in, as text or as JSON lines (``GARRISON_LOG_FORMAT``; see
:mod:`garrison.logs`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from celery import Celery, Task, current_task
from celery.app.log import Logging
from celery.utils.log import ColorFormatter, get_logger
from kombu.entity import Exchange, Queue

from garrison import logs
from garrison.config import Settings
from garrison.tasks import fstransport, redistransport


def automation_queue(settings: Settings, automation: str) -> str:
    """The queue of one automation's work (its effects, and keys that wait for it): only workers that
    have the automation consume it."""
    return f"{settings.queue}.automation.{automation}"


def queues_for(settings: Settings, automations: Iterable[str]) -> list[Queue]:
    """What a worker with these automations consumes: the fleet's queue and each automation's own."""
    return queues_for_names([settings.queue, *(automation_queue(settings, name) for name in sorted(automations))])


def queues_for_names(names: Iterable[str]) -> list[Queue]:
    """Queues each bound to its own direct exchange by its own name (as Celery makes a queue a task names
    that it was not told of), so no message reaches two queues."""
    return [Queue(name, Exchange(name, type="direct"), routing_key=name) for name in names]


def celery_config(settings: Settings) -> dict[str, Any]:
    broker_options: dict[str, Any] = {}
    if settings.broker_url.startswith("filesystem://"):
        fstransport.install()  # messages written whole, then renamed into place (see the module)
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
        redistransport.install()  # a worker survives Redis loss (see the module)
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
        "task_default_queue": settings.queue,
        "task_queues": queues_for(settings, ()),
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 4,
        # ETA tasks (timers) are checked this often; Celery's default of 1 s would make timers late.
        "worker_timer_precision": 0.1,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_hijack_root_logger": False,
        "garrison_log_format": settings.log_format,
        "beat_scheduler": "garrison.tasks.beat:GarrisonScheduler",
        "beat_max_loop_interval": 1.0,
        "beat_schedule": {
            "garrison-relay": {"task": "garrison.relay", "schedule": settings.relay_interval},
            **({"garrison-prune": {"task": "garrison.prune", "schedule": settings.retention_interval}}
               if settings.retention_interval > 0 else {}),
        },
        "timezone": "UTC",
        "enable_utc": True,
    }


class _TaskFilter(logging.Filter):
    """Names the Celery task a record was logged in (``task``, ``task_id``), so a log line leads to the
    task Flower shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        task = current_task
        request = getattr(task, "request", None) if task else None
        if request is not None and getattr(request, "id", None) and not hasattr(record, "task_id"):
            record.task = task.name
            record.task_id = request.id
        return True


class _ColorText(ColorFormatter):
    """Celery's coloured line with the record's known fields after the message."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return str(super().formatMessage(record)) + logs.context_suffix(record)


class GarrisonLogging(Logging):
    """Celery's logging set-up (worker and beat), then garrison's: the context fields on every handler,
    and JSON lines when ``garrison_log_format`` says so."""

    def setup_logging_subsystem(
        self, loglevel: Any = None, logfile: Any = None, format: Any = None, colorize: Any = None,
        hostname: Any = None, datefmt: Any = None, **kwargs: Any,
    ) -> Any:
        first = not self.already_setup
        receivers = super().setup_logging_subsystem(loglevel, logfile, format, colorize, hostname, datefmt, **kwargs)
        if first and not receivers:  # a ``setup_logging`` receiver means the user configures logging
            log_format = self.app.conf.get("garrison_log_format", "text")
            loggers = [logging.getLogger(), get_logger("celery.task")]
            for logger in loggers:
                for handler in logger.handlers:
                    handler.addFilter(_TaskFilter())
                    handler.addFilter(logs.ContextFilter())
                    if log_format == "json":
                        handler.setFormatter(logs.JsonFormatter())
            if log_format == "text":  # Celery's own line gets the fields; a formatter of yours stays yours
                for handler in loggers[0].handlers:
                    old = handler.formatter
                    if type(old) is ColorFormatter:
                        handler.setFormatter(_ColorText(old._fmt, use_color=old.use_color, datefmt=old.datefmt))
        return receivers


class GarrisonTask(Task):
    """The class of garrison's tasks: a retry keeps the readable arguments (``tenant=acme effect=63 orders
    key=order-1``) its first delivery had, where Celery would show the raw ``('acme', 63)`` in Flower."""

    def retry(self, args: Any = None, kwargs: Any = None, exc: Any = None, throw: bool = True, eta: Any = None,
              countdown: Any = None, max_retries: Any = None, **options: Any) -> Any:
        for name in ("argsrepr", "kwargsrepr"):
            shown = getattr(self.request, name, None)
            if shown and name not in options:
                options[name] = shown
        return super().retry(args, kwargs, exc, throw, eta, countdown, max_retries, **options)


def create_celery(settings: Settings) -> Celery:
    if settings.tracing == "otel":  # only then is OpenTelemetry imported (the otel extra)
        from garrison.tasks.tracing import connect

        connect()
    app = Celery("garrison", set_as_current=False, log=GarrisonLogging, task_cls=GarrisonTask)
    app.conf.update(celery_config(settings))
    return app
