"""What benchmarks/pulses.py runs: casern's inquiry machine (no listener) for garrison, and the naive
baseline: a raw Celery app with one ``checkTimeout`` task per entity, each locking the entity's row in
PostgreSQL (``SELECT ... FOR UPDATE``), applying the reducer and writing it back, then counting itself
done (Redis ``INCR``). Started with ``celery -A benchmarks.pulse_apps:raw_pulse_app worker``."""

from __future__ import annotations

import json
import os
from typing import Any

from celery import Celery

from garrison.automations.machine import Machine
from garrison.config import Settings
from garrison.tasks.app import celery_config

TIMEOUT_AFTER = 10.0
RAW_QUEUE = "bench-raw-pulses"
RAW_TASK = "bench.check_timeout"
RAW_TABLE = "bench_raw_inquiries"
DONE_KEY = "bench:pulses:done"

inquiry_bench = Machine("inquiry_bench", preferences={"timeoutAfter": TIMEOUT_AFTER})


@inquiry_bench.reducer
def initialInquiry(prefs: dict[str, Any], state: Any, data: dict[str, Any]) -> Any:
    return {"status": "inquired", "when": data["when"]}


@inquiry_bench.reducer
def checkTimeout(prefs: dict[str, Any], state: Any, data: dict[str, Any]) -> Any:
    return check_timeout(prefs["timeoutAfter"], state, data["now"])


def check_timeout(after: float, state: Any, now: float) -> Any:
    if state is None or state.get("status") != "inquired":
        return state
    if now - state["when"] > after:
        return {**state, "status": "timeout"}
    return state


def create_raw_pulse_app(settings: Settings) -> Celery:
    app = Celery("bench-raw-pulses", set_as_current=False)
    conf = celery_config(settings)
    conf.pop("beat_schedule", None)
    conf.pop("beat_scheduler", None)
    conf["task_default_queue"] = RAW_QUEUE
    app.conf.update(conf)
    app.task(name=RAW_TASK, acks_late=True, ignore_result=True)(raw_check_timeout)
    return app


_conn: Any = None
_redis: Any = None


def raw_check_timeout(key: str, now: float) -> None:
    """The naive pulse: one task per entity."""
    global _conn, _redis
    if _conn is None:
        import psycopg
        import redis

        _conn = psycopg.connect(os.environ["BENCH_RAW_PG"])
        _redis = redis.Redis.from_url(os.environ["BENCH_COUNTER"])
    with _conn.transaction():
        row = _conn.execute(f"SELECT state FROM {RAW_TABLE} WHERE key = %s FOR UPDATE", (key,)).fetchone()
        state = check_timeout(TIMEOUT_AFTER, row[0], now)
        _conn.execute(f"UPDATE {RAW_TABLE} SET state = %s WHERE key = %s", (json.dumps(state), key))
    _redis.incr(DONE_KEY)


raw_pulse_app = create_raw_pulse_app(Settings.from_env())
