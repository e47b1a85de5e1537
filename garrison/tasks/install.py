"""Put garrison's tasks into a Celery app you already have: ``garrison.tasks.install(app)``.

::

    # proj/celery.py
    from celery import Celery
    import garrison.tasks

    app = Celery("proj", broker="redis://localhost:6379/0")
    app.conf.worker_send_task_events = True
    garrison.tasks.install(app)          # garrison.process, garrison.effect, ... now run in `celery -A proj worker`

Your workers then run garrison's tasks next to yours, on your broker: garrison's client publishes through
your app, so ``garrison ingest`` and ``client.ingest`` reach them (garrison's ``GARRISON_BROKER_URL`` is
not used). The tasks keep their own options (acknowledged late, rejected when a worker is lost, JSON), so
your other tasks keep theirs. What garrison cannot run with is refused before anything is registered,
with a :class:`~garrison.errors.ConfigurationError` naming the setting (see
:mod:`garrison.config.conventions`): an app that accepts pickle, eager mode, task events off, a
``task_annotations`` entry that turns ``acks_late`` off for garrison's tasks, or a Redis visibility
timeout shorter than ``GARRISON_TIMER_HORIZON``.

``beat=True`` (the default) also puts the relay on the app's beat schedule and, when the app uses Celery's
default scheduler, garrison's scheduler (which runs the pulses too); a custom scheduler (say
django-celery-beat) is refused unless ``beat=False``, in which case run ``garrison beat`` beside it.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from garrison.config import Settings
from garrison.config.conventions import REQUIREMENTS, conflicts
from garrison.errors import ConfigurationError
from garrison.tasks.app import GarrisonTask, queues_for, queues_for_names

__all__ = ["install"]

DEFAULT_SCHEDULER = "celery.beat:PersistentScheduler"
SCHEDULER = "garrison.tasks.beat:GarrisonScheduler"


def install(app: Celery, *, settings: Settings | None = None, beat: bool = True) -> Celery:
    """Register garrison's tasks in ``app`` and make garrison publish through it. Returns ``app``.

    ``settings`` default to the ``GARRISON_*`` environment, with the app's broker as garrison's broker.
    Raises :class:`ConfigurationError` naming every setting of ``app`` garrison cannot run with; nothing
    is registered then. Installing twice into the same app is harmless.
    """
    import garrison.tasks as tasks

    conf = app.conf
    # acks_late and reject_on_worker_lost are garrison's tasks' own options (checked below, after
    # annotations): the app's defaults for its other tasks are the app's business.
    app_wide = tuple(n for n in REQUIREMENTS if n not in ("task_acks_late", "task_reject_on_worker_lost"))
    problems = conflicts({name: conf.get(name) for name in app_wide}, label=lambda n: f"app.conf.{n}")
    broker = str(conf.broker_url or "")
    settings = (settings or Settings.from_env()).with_overrides(broker_url=broker or tasks.settings.broker_url)
    visibility = (conf.broker_transport_options or {}).get("visibility_timeout")
    if broker.startswith(("redis://", "rediss://")) and visibility is not None and visibility <= settings.timer_horizon:
        problems.append(
            f"app.conf.broker_transport_options['visibility_timeout'] = {visibility!r}; garrison needs more than "
            f"GARRISON_TIMER_HORIZON ({settings.timer_horizon:g}s), or Redis re-delivers timer tasks while they wait")
    scheduler = str(conf.beat_scheduler or DEFAULT_SCHEDULER)
    if beat and scheduler not in (DEFAULT_SCHEDULER, SCHEDULER):
        problems.append(
            f"app.conf.beat_scheduler = {scheduler!r}; garrison's pulses need {SCHEDULER!r}: use it, or "
            "install(app, beat=False) and run `garrison beat` beside your beat")
    if problems:
        raise ConfigurationError("this Celery app cannot run garrison's tasks:\n  " + "\n  ".join(problems),
                                 field="celery")

    installed = []
    for name, task in sorted(tasks.app.tasks.items()):
        if not name.startswith("garrison."):
            continue
        run = type(task).__dict__["run"]  # the function as written: bound tasks take the task first
        bound = not isinstance(run, staticmethod)
        options: dict[str, Any] = {
            "name": name, "bind": bound, "acks_late": True, "reject_on_worker_lost": True, "serializer": "json",
            "ignore_result": task.ignore_result, "base": GarrisonTask,
        }
        if task.throws:
            options["throws"] = task.throws
        if name in app.tasks:  # Celery shares every @app.task with all apps: replace that copy with ours
            app.tasks.unregister(name)
        installed.append(app.task(**options)(run if bound else run.__func__))
    for copy in installed:
        real = app.tasks[copy.name]  # annotations apply when the task is bound to the app
        broken = [o for o in ("acks_late", "reject_on_worker_lost") if not getattr(real, o)]
        if broken:
            raise ConfigurationError(
                f"app.conf.task_annotations turns {', '.join(broken)} off for {copy.name}; garrison's tasks "
                "need them on (see garrison.config.conventions)", field="task_annotations")
    _route(app, settings.queue)
    if beat:
        conf.beat_scheduler = SCHEDULER
        schedule = dict(conf.beat_schedule or {})
        schedule.setdefault("garrison-relay", {"task": "garrison.relay", "schedule": settings.relay_interval})
        conf.beat_schedule = schedule
        conf.beat_max_loop_interval = min(float(conf.beat_max_loop_interval or 1.0), 1.0)
    conf.worker_timer_precision = min(float(conf.worker_timer_precision or 1.0), 0.1)  # timers on time
    conf.task_send_sent_event = True
    tasks.bind(app, settings)
    # Each automation's queue too (its effects, keys waiting for it). A worker adds them when it starts;
    # this is for one that does not send the signal (celery.contrib.testing's in-process worker).
    names = {q.name for q in conf.task_queues}
    conf.task_queues = [*conf.task_queues, *(q for q in queues_for(settings, [a.name for a in tasks.client().registry])
                                             if q.name not in names)]
    return app


def _route(app: Celery, queue: str) -> None:
    """garrison's tasks go to garrison's queue (``GARRISON_QUEUE``, whoever publishes them: this app, or a
    process with only the GARRISON_* settings), and the app's workers consume it next to the app's own
    default queue (and, once a worker starts, each of its automations' queues: garrison.tasks.fleet)."""
    from kombu.entity import Queue

    conf = app.conf
    routes = conf.task_routes
    mine = {"garrison.*": {"queue": queue}}
    if routes is None:
        conf.task_routes = mine
    elif isinstance(routes, dict):
        conf.task_routes = {**mine, **routes} if "garrison.*" not in routes else routes
    else:
        conf.task_routes = [mine, *list(routes if isinstance(routes, list | tuple) else [routes])]
    queues = list(conf.task_queues or [Queue(conf.task_default_queue)])
    if queue not in {q.name for q in queues}:
        queues.extend(queues_for_names([queue]))
    conf.task_queues = queues
