"""Journey throughput: 5,000 users through an onboarding-like journey with short timeouts, garrison next to
a naive raw-Celery implementation of the same flow, same broker, same worker settings, same run.

garrison: ``bench_onboarding`` (benchmarks/journey_apps.py, the shape of ``garrison.demo.onboarding`` with
150 ms timeouts) in one real ``celery -A garrison.tasks worker --pool prefork -c 2 --beat``. The driver
ingests, per user, ``app/email.submitted``, ``app/account.created`` and ``post1``'s ``app/post.created``
with ``ingest_many`` (``--chunk`` users per call). Every run then waits three times for its timeout
(email.verified; post2, a reminder, post2 again), so it takes at least 3 x 150 ms, and completes with
``posts == ["post1"]``. Timed from the first ``ingest_many`` until every run is ``completed`` in
``garrison_runs`` (polled every 50 ms); then checked: one ``garrison/timer`` event per timeout (3 per
user), every result as expected, no failure.

raw Celery: ``benchmarks/raw_journeys.py``, the same flow as a naive Celery app: one task per event
(publish order as above), one countdown task per timeout, the user's state in a PostgreSQL row locked per
task; in one ``celery -A benchmarks.raw_journeys:raw_journey_app worker --pool prefork -c 2`` configured
like garrison's (JSON, late ack, prefetch 4, task events on). Timed from the first publish until every
user has completed (Redis ``INCR``), then checked the same way.

Both sides are warmed up first (4 users in another tenant / key space).

    python benchmarks/journeys.py                       # PostgreSQL + Redis (BENCH_PG_URL / BENCH_REDIS_URL)
    python benchmarks/journeys.py --users 1000 --raw none
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

from benchmarks.procs import wait_for, worker  # noqa: E402
from benchmarks.throughput import fresh, pg_url  # noqa: E402
from garrison.client import Garrison  # noqa: E402
from garrison.config import Settings  # noqa: E402

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
PG_SCHEMA = "garrison_bench_journeys"
REDIS_URL = "redis://127.0.0.1:6379/14"
TENANT = "bench"
WARMUP_TENANT = "warmup"
WARM_USERS = 4


@dataclass
class Run:
    side: str
    users: int
    feed_s: float  # ingest_many calls (garrison) / task publishing (raw)
    total_s: float

    @property
    def per_s(self) -> float:
        return self.users / self.total_s


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=5_000)
    p.add_argument("--timeout-ms", type=int, default=150, help="the journey's timeouts (the account's second: x2)")
    p.add_argument("--chunk", type=int, default=500, help="users per ingest_many call (3 events each)")
    p.add_argument("--repeat", type=int, default=1, help="runs of each side; the median is reported")
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--raw", choices=("naive", "none"), default="naive")
    p.add_argument("--skip-garrison", action="store_true")
    p.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", PG_URL))
    p.add_argument("--pg-schema", default=PG_SCHEMA)
    p.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", REDIS_URL))
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--json", type=Path, help="also write the figures here")
    return p.parse_args(argv)


def user_events(i: int, prefix: str = "u") -> list[tuple[str, str, dict[str, Any]]]:
    key, email, user_id = f"{prefix}{i:05d}", f"{prefix}{i}@example.com", f"id-{prefix}{i}"
    return [
        (key, "app/email.submitted", {"email": email}),
        (key, "app/account.created", {"email": email, "userId": user_id}),
        (key, "app/post.created", {"id": "post1", "userId": user_id}),
    ]


def expected(i: int, prefix: str = "u") -> dict[str, Any]:
    return {"email": f"{prefix}{i}@example.com", "userId": f"id-{prefix}{i}", "verified": False, "posts": ["post1"]}


def settings_for(args: argparse.Namespace, data_dir: Path) -> Settings:
    return Settings(
        database_url=pg_url(args.pg_url, args.pg_schema), broker_url=args.redis_url, data_dir=data_dir,
        automations=("benchmarks.journey_apps",), tenant=TENANT, log_level="WARNING",
    )


def _count(client: Garrison, sql: str, **params: Any) -> int:
    with client.db.engine.connect() as conn:
        return int(conn.execute(text(sql), params).scalar() or 0)


def completed(client: Garrison, tenant: str) -> int:
    return _count(client, "SELECT count(*) FROM garrison_runs WHERE tenant = :t AND status = 'completed'", t=tenant)


# -- garrison ----------------------------------------------------------------------------------------


def run_garrison(args: argparse.Namespace, data_dir: Path) -> Run:
    settings = settings_for(args, data_dir)
    fresh(settings, args)
    client = Garrison(settings)
    env = {"BENCH_JOURNEY_TIMEOUT_MS": str(args.timeout_ms)}
    log = data_dir / "garrison-worker.log"
    try:
        with worker("garrison.tasks", settings, log, concurrency=args.concurrency, beat=True,
                    **env) as proc:
            client.ingest_many([{"name": n, "key": k, "data": d, "tenant": WARMUP_TENANT}
                                for i in range(WARM_USERS) for k, n, d in user_events(i, "w")])
            wait_for(lambda: completed(client, WARMUP_TENANT) == WARM_USERS, 120, "the garrison warm-up", proc)

            t0 = time.perf_counter()
            for start in range(0, args.users, args.chunk):
                client.ingest_many([{"name": n, "key": k, "data": d}
                                    for i in range(start, min(start + args.chunk, args.users))
                                    for k, n, d in user_events(i)])
            t1 = time.perf_counter()
            wait_for(lambda: completed(client, TENANT) >= args.users, args.timeout, "garrison's runs", proc)
            t2 = time.perf_counter()
    except BaseException:
        print(log.read_text(errors="replace")[-4000:], file=sys.stderr)
        raise
    with client.db.engine.connect() as conn:
        results = {k: r for k, r in conn.execute(text(
            "SELECT key, result FROM garrison_runs WHERE tenant = :t AND status = 'completed'"), {"t": TENANT})}
    timers = _count(client, "SELECT count(*) FROM garrison_events WHERE tenant = :t AND name = 'garrison/timer'",
                    t=TENANT)
    failures = _count(client, "SELECT count(*) FROM garrison_failures")
    client.db.dispose()
    wrong = sum(1 for i in range(args.users) if _json(results.get(f"u{i:05d}")) != expected(i))
    if wrong or timers != 3 * args.users or failures:
        raise AssertionError(f"garrison: {wrong} wrong results, {timers} timer events, {failures} failures")
    return Run("garrison", args.users, t1 - t0, t2 - t0)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


# -- raw Celery ------------------------------------------------------------------------------------


def run_raw(args: argparse.Namespace, data_dir: Path) -> Run:
    import psycopg
    import redis

    from benchmarks import raw_journeys as rj

    settings = settings_for(args, data_dir)
    fresh(settings, args)  # the same clean schema and broker
    raw_pg = pg_url(args.pg_url, args.pg_schema)
    with psycopg.connect(raw_pg, autocommit=True) as conn:
        rj.create_table(conn)
    counter = redis.Redis.from_url(args.redis_url)
    counter.delete(rj.DONE_KEY)
    app = rj.create_raw_journey_app(settings)
    env = {"BENCH_JOURNEY_TIMEOUT_MS": str(args.timeout_ms), "BENCH_RAW_PG": raw_pg, "BENCH_COUNTER": args.redis_url}
    log = data_dir / "raw-worker.log"

    def publish(events: list[tuple[str, str, dict[str, Any]]]) -> None:
        with app.producer_or_acquire() as producer:
            for key, name, data in events:
                app.send_task(rj.EVENT_TASK, args=[key, name, data], producer=producer)

    def done() -> int:
        return int(counter.get(rj.DONE_KEY) or 0)

    try:
        with worker("benchmarks.raw_journeys:raw_journey_app", settings, log, queue=rj.QUEUE,
                    concurrency=args.concurrency, **env) as proc:
            publish([e for i in range(WARM_USERS) for e in user_events(i, "w")])
            wait_for(lambda: done() == WARM_USERS, 120, "the raw warm-up", proc)
            counter.delete(rj.DONE_KEY)

            t0 = time.perf_counter()
            for start in range(0, args.users, args.chunk):
                publish([e for i in range(start, min(start + args.chunk, args.users)) for e in user_events(i)])
            t1 = time.perf_counter()
            wait_for(lambda: done() >= args.users, args.timeout, "the raw journeys", proc)
            t2 = time.perf_counter()
    except BaseException:
        print(log.read_text(errors="replace")[-4000:], file=sys.stderr)
        raise
    with psycopg.connect(raw_pg) as conn:
        states = dict(conn.execute(f"SELECT key, state FROM {rj.TABLE} WHERE key LIKE 'u%'").fetchall())
    wrong = sum(1 for i in range(args.users) if (states.get(f"u{i:05d}") or {}).get("result") != expected(i))
    if wrong or done() != args.users:
        raise AssertionError(f"raw Celery: {wrong} wrong results, {done()} completions")
    return Run("raw Celery (naive)", args.users, t1 - t0, t2 - t0)


# -- driver ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    print(f"journeys: {args.users:,} users through bench_onboarding ({args.timeout_ms} ms timeouts, 3 per run), "
          f"PostgreSQL + Redis, 1 worker x prefork -c {args.concurrency}, {args.repeat} run(s) each", flush=True)
    runs: dict[str, list[Run]] = {}
    with tempfile.TemporaryDirectory(prefix="garrison-bench-journeys-") as tmp:
        for n in range(args.repeat):
            sides = ([] if args.skip_garrison else [run_garrison]) + ([run_raw] if args.raw == "naive" else [])
            for side in sides:
                data_dir = Path(tmp) / f"{side.__name__}{n}"
                data_dir.mkdir()
                r = side(args, data_dir)
                runs.setdefault(r.side, []).append(r)
                print(f"  [{n + 1}] {r.side:<20} {r.per_s:8.1f} journeys/s  (wall {r.total_s:.2f} s, "
                      f"feeding {r.feed_s:.2f} s)", flush=True)
    out: dict[str, Any] = {"users": args.users, "timeout_ms": args.timeout_ms,
                           "runs": {k: [asdict(r) for r in v] for k, v in runs.items()}}
    print(f"\nmedian of {args.repeat} run(s):")
    medians = {side: (statistics.median(r.per_s for r in rs), statistics.median(r.total_s for r in rs))
               for side, rs in runs.items()}
    for side, (rate, wall) in medians.items():
        print(f"  {side:<20} {rate:8.1f} completed journeys/s   wall {wall:.2f} s for {args.users:,} users")
    if "garrison" in medians and "raw Celery (naive)" in medians:
        ratio = medians["garrison"][0] / medians["raw Celery (naive)"][0]
        out["ratio"] = ratio
        print(f"  garrison / raw Celery = {ratio:.2f}x")
    out["medians"] = medians
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
