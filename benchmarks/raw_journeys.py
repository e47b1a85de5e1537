"""The baseline of journeys.py: ``bench_onboarding`` (benchmarks/journey_apps.py) as a naive Celery app would
write it. Start it with ``celery -A benchmarks.raw_journeys:raw_journey_app worker``.

- one task per event (``bench.journey_event``): lock the user's row in PostgreSQL (``SELECT ... FOR
  UPDATE``), keep the event (a wait may be reached after its event arrived: the journey's look-back), and
  advance the user's state machine if it waits for that event;
- one countdown task per timeout (``bench.journey_timeout``, ``countdown=`` the timeout, held by the worker
  until then), which advances the machine if the user still waits on that same wait (a token);
- a reminder is one more event task, as the journey's ``ctx.ingest`` writes one more event.

The state is one JSON row per user in the table ``bench_raw_journeys`` (of the benchmark's schema): the
same durability as garrison's SQL, none of its guarantees (no event log, no exactly-once timers, no
history). A completed run counts itself done with a Redis ``INCR``. The app is configured like garrison's
(``garrison.tasks.app.celery_config``: JSON, late ack, prefetch 4, task events on) on its own queue.
"""

from __future__ import annotations

import json
import os
from typing import Any

from celery import Celery

from garrison.config import Settings
from garrison.tasks.app import celery_config

QUEUE = "bench-raw-journeys"
EVENT_TASK = "bench.journey_event"
TIMEOUT_TASK = "bench.journey_timeout"
TABLE = "bench_raw_journeys"
DONE_KEY = "bench:journeys:done"
TIMEOUT_S = int(os.environ.get("BENCH_JOURNEY_TIMEOUT_MS", "150")) / 1000

# state -> (event name, match built from the state, timeout in units of TIMEOUT_S)
WAITS: dict[str, tuple[str, Any, int]] = {
    "account0": ("app/account.created", lambda st: {"email": st["email"]}, 1),
    "account1": ("app/account.created", lambda st: {"email": st["email"]}, 2),
    "verified": ("app/email.verified", lambda st: {"userId": st["userId"]}, 1),
    "post1_0": ("app/post.created", lambda st: {"id": "post1"}, 1),
    "post1_1": ("app/post.created", lambda st: {"id": "post1"}, 1),
    "post2_0": ("app/post.created", lambda st: {"id": "post2"}, 1),
    "post2_1": ("app/post.created", lambda st: {"id": "post2"}, 1),
}


def create_raw_journey_app(settings: Settings) -> Celery:
    app = Celery("bench-raw-journeys", set_as_current=False)
    conf = celery_config(settings)
    conf.pop("beat_schedule", None)
    conf.pop("beat_scheduler", None)
    conf["task_default_queue"] = QUEUE
    app.conf.update(conf)
    app.task(name=EVENT_TASK, acks_late=True, ignore_result=True)(on_event)
    app.task(name=TIMEOUT_TASK, acks_late=True, ignore_result=True)(on_timeout)
    return app


# -- storage (one connection per pool process, opened after the fork) -----------------------------

_conn: Any = None
_redis: Any = None


def connection() -> Any:
    global _conn
    if _conn is None:
        import psycopg

        _conn = psycopg.connect(os.environ["BENCH_RAW_PG"])
    return _conn


def create_table(conn: Any) -> None:
    conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
    conn.execute(f"CREATE TABLE {TABLE} (key text PRIMARY KEY, state jsonb NOT NULL)")


def _update(key: str, change: Any) -> tuple[list[tuple[str, Any]], bool]:
    """Lock the user's row, let ``change(state)`` mutate it, store it; returns (actions, completed now)."""
    conn = connection()
    with conn.transaction():
        conn.execute(f"INSERT INTO {TABLE} (key, state) VALUES (%s, '{{}}') ON CONFLICT DO NOTHING", (key,))
        row = conn.execute(f"SELECT state FROM {TABLE} WHERE key = %s FOR UPDATE", (key,)).fetchone()
        st: dict[str, Any] = row[0]
        was_done = st.get("pc") == "done"
        actions: list[tuple[str, Any]] = []
        change(st, actions)
        conn.execute(f"UPDATE {TABLE} SET state = %s WHERE key = %s", (json.dumps(st), key))
    return actions, (st.get("pc") == "done" and not was_done)


def _after_commit(key: str, actions: list[tuple[str, Any]], completed: bool) -> None:
    app = raw_journey_app
    with app.producer_or_acquire() as producer:
        for kind, value in actions:
            if kind == "timeout":
                token, delay = value
                app.send_task(TIMEOUT_TASK, args=[key, token], countdown=delay, producer=producer)
            else:
                name, data = value
                app.send_task(EVENT_TASK, args=[key, name, data], producer=producer)
    if completed:
        global _redis
        if _redis is None:
            import redis

            _redis = redis.Redis.from_url(os.environ["BENCH_COUNTER"])
        _redis.incr(DONE_KEY)


# -- the tasks --------------------------------------------------------------------------------------


def on_event(key: str, name: str, data: dict[str, Any]) -> None:
    def change(st: dict[str, Any], actions: list[tuple[str, Any]]) -> None:
        st.setdefault("seen", []).append({"name": name, "data": data})
        if name == "app/email.submitted" and "pc" not in st:
            st.update(pc="account0", email=data["email"], token=0, used=[], posts=[], waiting=False)
            advance(st, actions)
        elif st.get("waiting"):
            advance(st, actions)

    _after_commit(key, *_update(key, change))


def on_timeout(key: str, token: int) -> None:
    def change(st: dict[str, Any], actions: list[tuple[str, Any]]) -> None:
        if st.get("waiting") and st.get("token") == token:
            st["waiting"] = False
            st["timed_out"] = True
            advance(st, actions)

    _after_commit(key, *_update(key, change))


# -- the state machine: bench_onboarding by hand -----------------------------------------------------


def _take(st: dict[str, Any], name: str, match: dict[str, Any]) -> dict[str, Any] | None:
    for i, e in enumerate(st["seen"]):
        if i not in st["used"] and e["name"] == name and all(e["data"].get(k) == v for k, v in match.items()):
            st["used"].append(i)
            return dict(e["data"])
    return None


def advance(st: dict[str, Any], actions: list[tuple[str, Any]]) -> None:
    while st["pc"] != "done":
        pc = st["pc"]
        name, match, units = WAITS[pc]
        found = _take(st, name, match(st))
        if found is None and not st.pop("timed_out", False):
            if not st["waiting"]:  # arm this wait's timeout once; an unrelated event leaves it armed
                st["token"] += 1
                st["waiting"] = True
                actions.append(("timeout", (st["token"], units * TIMEOUT_S)))
            return
        st["waiting"] = False
        if pc == "account0":
            if found is None:
                actions.append(("event", ("reminder/account.created", {"email": st["email"]})))
                st["pc"] = "account1"
            else:
                st["userId"], st["pc"] = found["userId"], "verified"
        elif pc == "account1":
            if found is None:
                st["pc"], st["result"] = "done", {"email": st["email"], "account": None}
            else:
                st["userId"], st["pc"] = found["userId"], "verified"
        elif pc == "verified":
            st["verified"], st["pc"] = found is not None, "post1_0"
        else:
            post, attempt = pc.split("_")
            nxt = "post2_0" if post == "post1" else "done"
            if found is not None:
                st["posts"].append(post)
                st["pc"] = nxt
            elif attempt == "0":
                actions.append(("event", ("reminder/post.created", {"id": post, "userId": st["userId"]})))
                st["pc"] = f"{post}_1"
            else:
                st["pc"] = nxt
            if st["pc"] == "done":
                st["result"] = {"email": st["email"], "userId": st["userId"], "verified": st["verified"],
                                "posts": st["posts"]}


raw_journey_app = create_raw_journey_app(Settings.from_env())
