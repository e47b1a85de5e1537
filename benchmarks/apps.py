"""What the benchmarks run in real workers.

- ``tally``: a casern-style reducer machine with one reducer (``add``) and NO listeners, so applying a
  message writes state, a state version and the cursor, and no effect. garrison workers find it through
  ``GARRISON_AUTOMATIONS=benchmarks.apps``.
- ``tally_listened``: the same with one no-op listener (``throughput.py --listener``, information only).
- ``raw_app``: a bare Celery app with one no-op task, the baseline. It is configured exactly like
  garrison's own app (``garrison.tasks.app.celery_config``: JSON, late ack, prefetch 4, task events on),
  from the same ``GARRISON_*`` environment, so the two runs differ only in what the task does.
  Start it with ``celery -A benchmarks.apps:raw_app worker``.

The no-op task counts its completions so the driver knows when all are done: ``INCR`` on a Redis key
when ``BENCH_COUNTER`` is a ``redis://`` URL, else one byte appended to the file ``BENCH_COUNTER`` names
(the embedded run has no Redis; an ``O_APPEND`` write of one byte is atomic, so the file size is the count).
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from garrison.automations.machine import Machine, Transition
from garrison.config import Settings
from garrison.tasks.app import celery_config

RAW_QUEUE = "bench-raw"
RAW_TASK = "bench.noop"
COUNTER_KEY = "bench:done"

# -- garrison side --------------------------------------------------------------------------------

tally = Machine("tally")


@tally.reducer
def add(prefs: dict[str, Any], state: Any, data: dict[str, Any]) -> Any:
    state = state or {"count": 0}
    state["count"] += int(data.get("n", 1))
    return state


# The same machine with one no-op listener: every transition also commits an effect, dispatched as one
# ``garrison.effect`` task (``throughput.py --listener``; information only).
tally_listened = Machine("tally_listened")
tally_listened.reducer(add)


@tally_listened.listener
def seen(t: Transition) -> None:
    return None


# -- raw Celery baseline --------------------------------------------------------------------------


def create_raw_app(settings: Settings, *, task_events: bool = True) -> Celery:
    """garrison's Celery configuration on another queue; ``task_events=False`` turns task events off
    (Celery's default), which makes the faster baseline."""
    app = Celery("bench-raw", set_as_current=False)
    conf = celery_config(settings)
    conf.pop("beat_schedule", None)
    conf.pop("beat_scheduler", None)
    conf["task_default_queue"] = RAW_QUEUE
    conf["worker_send_task_events"] = task_events
    conf["task_send_sent_event"] = task_events
    app.conf.update(conf)
    app.task(name=RAW_TASK, acks_late=True, ignore_result=True)(noop)
    return app


_redis: Any = None


def noop(i: int) -> None:
    """Does nothing but count itself done."""
    global _redis
    target = os.environ.get("BENCH_COUNTER", "")
    if target.startswith(("redis://", "rediss://")):
        if _redis is None:
            import redis

            _redis = redis.Redis.from_url(target)
        _redis.incr(COUNTER_KEY)
    elif target:
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, b".")
        finally:
            os.close(fd)


# ``celery -A benchmarks.apps:raw_app`` (and the driver's publisher) build it from the environment.
raw_app = create_raw_app(Settings.from_env(), task_events=os.environ.get("BENCH_TASK_EVENTS", "1") != "0")
