"""End-to-end throughput: garrison next to raw Celery, same broker, same workers, same run.

garrison: ``ingest_many`` of N events over K keys (one transaction, then ``garrison.process`` tasks of
``publish_batch`` keys), applied by the reducer machine ``tally`` (benchmarks/apps.py, no listeners) in
real ``celery -A garrison.tasks worker`` processes, timed from the start of ``ingest_many`` until every
cursor is at its stream's end (``sum(garrison_cursors.processed_seq) == N``, polled every 10 ms). Then
the run is checked: K entities, ``sum(state.count) == N``, no failure.

raw Celery: one no-op task per event (N tasks) published from one producer to the same broker, run by
the same number of worker processes of an app configured like garrison's (``benchmarks.apps:raw_app``),
timed from the first publish until the N-th task has counted itself done (Redis ``INCR``, polled every
10 ms). By default the baseline is measured twice: with garrison's Celery configuration (task events on)
and with task events off (Celery's default, the faster baseline); the ratio is given against both.

Workers: one ``celery worker --pool prefork --concurrency 2`` by default (two pool processes on a
2-core machine), log level WARNING, for both sides. Each side is warmed up before timing (both pool
processes have connected and imported everything), so worker start-up is not measured.

    python benchmarks/throughput.py                 # PostgreSQL + Redis
    python benchmarks/throughput.py --embedded      # SQLite + kombu filesystem broker (information only)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

from benchmarks.proposals import install  # noqa: E402
from garrison.client import Garrison  # noqa: E402
from garrison.config import Settings  # noqa: E402

# The tables go to their own schema of the database ``test``, so a benchmark never touches the tables
# the test suite creates (and drops) in ``public`` of the same database, even when both run at once.
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
PG_SCHEMA = "garrison_bench"
REDIS_URL = "redis://127.0.0.1:6379/14"
TENANT = "bench"
WARMUP_TENANT = "warmup"
POLL = 0.01


# -- results ----------------------------------------------------------------------------------------


@dataclass
class GarrisonRun:
    events: int
    keys: int
    ingest_s: float
    total_s: float
    tasks: int

    @property
    def events_per_s(self) -> float:
        return self.events / self.total_s


@dataclass
class RawRun:
    tasks: int
    publish_s: float
    total_s: float
    task_events: bool

    @property
    def tasks_per_s(self) -> float:
        return self.tasks / self.total_s


@dataclass
class Report:
    backend: str
    patch: str
    workers: int
    concurrency: int
    pool: str
    events: int
    keys: int
    garrison: list[GarrisonRun] = field(default_factory=list)
    raw: dict[str, list[RawRun]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["garrison_events_per_s"] = _median([r.events_per_s for r in self.garrison])
        out["raw_tasks_per_s"] = {name: _median([r.tasks_per_s for r in runs]) for name, runs in self.raw.items()}
        return out


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


# -- settings and clean state ----------------------------------------------------------------------


def pg_url(base: str, schema: str) -> str:
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}"


def make_settings(args: argparse.Namespace, data_dir: Path) -> Settings:
    common: dict[str, Any] = {
        "data_dir": data_dir,
        "automations": ("benchmarks.apps",),
        "tenant": TENANT,
        "log_level": "WARNING",
    }
    if args.embedded:
        return Settings(**common)
    return Settings(database_url=pg_url(args.pg_url, args.pg_schema), broker_url=args.redis_url, **common)


def fresh(settings: Settings, args: argparse.Namespace) -> None:
    """Empty tables, empty broker."""
    if not settings.is_sqlite:
        from sqlalchemy import create_engine

        engine = create_engine(args.pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{args.pg_schema}"'))
        engine.dispose()
    client = Garrison(settings)
    client.db.drop_all()
    client.init_db()
    client.db.dispose()
    if settings.broker_url.startswith("redis"):
        import redis

        redis.Redis.from_url(settings.broker_url).flushdb()
    else:
        import shutil

        shutil.rmtree(settings.broker_folder, ignore_errors=True)


# -- worker processes --------------------------------------------------------------------------------


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GARRISON_", "BENCH_"))}
    env.update(settings.as_env())
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


@contextmanager
def workers(
    app: str, settings: Settings, args: argparse.Namespace, log_dir: Path, queue: str | None, **env: str
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``args.workers`` celery worker processes of ``app`` (on ``queue``, or the queues its app declares);
    stopped (whole process group) on exit."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for n in range(args.workers):
            name = f"{app.split(':')[-1].replace('.', '-')}{n}"
            cmd = [
                sys.executable, "-m", "celery", "-A", app, "worker", "--loglevel", "WARNING",
                "--pool", args.pool, "--concurrency", str(args.concurrency), *(["-Q", queue] if queue else []),
                "--hostname", f"{name}@%h", "--without-mingle", "--without-gossip", "--without-heartbeat",
            ]
            log = (log_dir / f"{name}.log").open("wb")
            procs.append(
                subprocess.Popen(cmd, cwd=ROOT, env=child_env(settings, **env), stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
            )
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"a worker exited ({dead[0].returncode}) while waiting for {what}; see its log")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(POLL)


# -- garrison ----------------------------------------------------------------------------------------


def make_events(n_events: int, n_keys: int, target: str = "tally") -> list[dict[str, Any]]:
    """``n_events`` events, round-robin over ``n_keys`` keys (so each key's events are interleaved)."""
    return [
        {"name": "add", "key": f"k{i % n_keys:06d}", "data": {"n": 1}, "target": target}
        for i in range(n_events)
    ]


def effects_done(client: Garrison, tenant: str) -> int:
    with client.db.engine.connect() as conn:
        value = conn.execute(
            text("SELECT count(*) FROM garrison_effects WHERE tenant = :t AND status = 'done'"), {"t": tenant}
        ).scalar()
    return int(value or 0)


def applied(client: Garrison, tenant: str) -> int:
    with client.db.engine.connect() as conn:
        value = conn.execute(
            text("SELECT coalesce(sum(processed_seq), 0) FROM garrison_cursors WHERE tenant = :t"), {"t": tenant}
        ).scalar()
    return int(value or 0)


def verify(client: Garrison, n_events: int, n_keys: int, automation: str = "tally") -> None:
    with client.db.engine.connect() as conn:
        states = conn.execute(
            text("SELECT state FROM garrison_entities WHERE tenant = :t AND automation = :a"),
            {"t": TENANT, "a": automation},
        ).scalars().all()
        failures = conn.execute(
            text("SELECT count(*) FROM garrison_failures WHERE tenant = :t"), {"t": TENANT}
        ).scalar()
    states = [json.loads(s) if isinstance(s, str) else s for s in states]
    total = sum(s["count"] for s in states)
    if len(states) != n_keys or total != n_events or failures:
        raise AssertionError(f"wrong result: {len(states)} entities, sum of counts {total}, {failures} failures")


def run_garrison(args: argparse.Namespace, settings: Settings, log_dir: Path) -> GarrisonRun:
    fresh(settings, args)
    client = Garrison(settings)
    target = "tally_listened" if args.listener else "tally"
    events = make_events(args.events, args.keys, target)
    app, env = ("benchmarks.patched_worker:app", {"BENCH_PATCH": args.patch}) if args.patch else ("garrison.tasks", {})
    with workers(app, settings, args, log_dir, None, **env) as procs:
        # Warm-up: one task per key, so every pool process has imported the automations and connected.
        warm = 4 * args.workers * args.concurrency
        for i in range(warm):
            client.ingest("add", f"w{i}", {"n": 1}, target=target, tenant=WARMUP_TENANT)
        wait_for(lambda: applied(client, WARMUP_TENANT) == warm, 120, "the garrison warm-up", procs)
        if args.listener:
            wait_for(lambda: effects_done(client, WARMUP_TENANT) == warm, 120, "the warm-up's listeners", procs)

        t0 = time.perf_counter()
        if args.ingest_chunk:
            for start in range(0, len(events), args.ingest_chunk):
                client.ingest_many(events[start : start + args.ingest_chunk])
        else:
            client.ingest_many(events)
        t1 = time.perf_counter()
        wait_for(lambda: applied(client, TENANT) >= args.events, args.timeout, "garrison to apply", procs)
        if args.listener:  # done means: every listener has run too
            wait_for(lambda: effects_done(client, TENANT) >= args.events, args.timeout, "the listeners", procs)
        t2 = time.perf_counter()
    verify(client, args.events, args.keys, target)
    client.db.dispose()
    size = args.ingest_chunk or len(events)
    tasks = sum(
        -(-len({e["key"] for e in events[start : start + size]}) // settings.publish_batch)
        for start in range(0, len(events), size)
    )
    return GarrisonRun(events=args.events, keys=args.keys, ingest_s=t1 - t0, total_s=t2 - t0, tasks=tasks)


# -- raw Celery ----------------------------------------------------------------------------------


class Counter:
    """Completions counted by the no-op task (benchmarks/apps.py)."""

    def __init__(self, settings: Settings, data_dir: Path) -> None:
        if settings.broker_url.startswith("redis"):
            import redis

            from benchmarks.apps import COUNTER_KEY

            self.target = settings.broker_url
            self._redis = redis.Redis.from_url(settings.broker_url)
            self._key = COUNTER_KEY
        else:
            self.target = str(data_dir / "done.count")
            self._redis = None

    def reset(self) -> None:
        if self._redis is not None:
            self._redis.delete(self._key)
        else:
            with suppress(FileNotFoundError):
                os.unlink(self.target)

    def value(self) -> int:
        if self._redis is not None:
            return int(self._redis.get(self._key) or 0)
        try:
            return os.path.getsize(self.target)
        except FileNotFoundError:
            return 0


def run_raw(args: argparse.Namespace, settings: Settings, log_dir: Path, task_events: bool) -> RawRun:
    from benchmarks.apps import RAW_QUEUE, RAW_TASK, create_raw_app

    fresh(settings, args)
    counter = Counter(settings, settings.data_dir)
    counter.reset()
    app = create_raw_app(settings, task_events=task_events)
    env = {"BENCH_COUNTER": counter.target, "BENCH_TASK_EVENTS": "1" if task_events else "0"}
    with workers("benchmarks.apps:raw_app", settings, args, log_dir, RAW_QUEUE, **env) as procs:
        warm = 4 * args.workers * args.concurrency
        with app.producer_or_acquire() as producer:
            for i in range(warm):
                app.send_task(RAW_TASK, args=[i], producer=producer)
        wait_for(lambda: counter.value() == warm, 120, "the raw Celery warm-up", procs)
        counter.reset()

        t0 = time.perf_counter()
        with app.producer_or_acquire() as producer:
            for i in range(args.raw_tasks):
                app.send_task(RAW_TASK, args=[i], producer=producer)
        t1 = time.perf_counter()
        wait_for(lambda: counter.value() >= args.raw_tasks, args.timeout, "raw Celery to finish", procs)
        t2 = time.perf_counter()
    if counter.value() != args.raw_tasks:
        raise AssertionError(f"raw Celery ran {counter.value()} tasks, expected {args.raw_tasks}")
    return RawRun(tasks=args.raw_tasks, publish_s=t1 - t0, total_s=t2 - t0, task_events=task_events)


# -- driver --------------------------------------------------------------------------------------


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--embedded", action="store_true", help="SQLite + kombu filesystem broker instead of PG + Redis")
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--keys", type=int, default=2_000)
    p.add_argument("--raw-tasks", type=int, default=None,
                   help="no-op tasks of the raw baseline (default: --events; with --embedded: 2000, because "
                        "kombu's filesystem transport lists its whole folder for every message it takes)")
    p.add_argument("--repeat", type=int, default=3, help="runs of each side; the median is reported")
    p.add_argument("--workers", type=int, default=1, help="celery worker processes (default 1)")
    p.add_argument("--concurrency", type=int, default=2, help="pool processes per worker (default 2)")
    p.add_argument("--pool", default="prefork")
    p.add_argument("--ingest-chunk", type=int, default=0, help="events per ingest_many call (0: all in one)")
    p.add_argument("--raw", choices=("both", "events", "no-events", "none"), default="both",
                   help="raw Celery baselines: with garrison's config (task events on), events off, both")
    p.add_argument("--skip-garrison", action="store_true")
    p.add_argument("--listener", action="store_true",
                   help="information: a machine with one no-op listener, timed until every listener has run "
                        "(one garrison.effect task per transition)")
    p.add_argument("--patch", default="", help="garrison with optimizations of benchmarks/proposals.py installed, "
                   "in the driver (ingest) and the workers, e.g. unnest+nodata")
    p.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", PG_URL))
    p.add_argument("--pg-schema", default=PG_SCHEMA)
    p.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", REDIS_URL))
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    if args.raw_tasks is None:
        args.raw_tasks = min(args.events, 2_000) if args.embedded else args.events
    return args


def main(argv: list[str] | None = None) -> Report:
    args = parse(argv)
    warnings.filterwarnings("ignore", message=".*filesystem.*")
    backend = "SQLite + filesystem broker" if args.embedded else "PostgreSQL + Redis"
    report = Report(backend=backend, patch=args.patch, workers=args.workers, concurrency=args.concurrency,
                    pool=args.pool, events=args.events, keys=args.keys)
    raws = {"both": [True, False], "events": [True], "no-events": [False], "none": []}[args.raw]
    patch = f", garrison patched with {args.patch}" if args.patch else ""
    print(f"throughput: {args.events} events over {args.keys} keys, {backend}{patch}, "
          f"{args.workers} worker x {args.pool} -c {args.concurrency}, {args.repeat} runs each; "
          f"raw baseline: {args.raw_tasks} no-op tasks", flush=True)
    with install(args.patch), tempfile.TemporaryDirectory(prefix="garrison-bench-") as tmp:
        for n in range(args.repeat):
            data_dir = Path(tmp) / f"run{n}"
            data_dir.mkdir()
            settings = make_settings(args, data_dir)
            if not args.skip_garrison:
                g = run_garrison(args, settings, data_dir)
                report.garrison.append(g)
                print(f"  [{n + 1}] garrison: {g.events_per_s:8.0f} events/s  (total {g.total_s:.2f} s, "
                      f"ingest_many {g.ingest_s:.2f} s, {g.tasks} process tasks)", flush=True)
            for task_events in raws:
                r = run_raw(args, settings, data_dir, task_events)
                name = _raw_name(task_events)
                report.raw.setdefault(name, []).append(r)
                print(f"  [{n + 1}] raw Celery ({name}): {r.tasks_per_s:8.0f} tasks/s  (total {r.total_s:.2f} s, "
                      f"publish {r.publish_s:.2f} s)", flush=True)
    summary(report)
    if args.json:
        args.json.write_text(json.dumps(report.as_dict(), indent=2))
    return report


def _raw_name(task_events: bool) -> str:
    return "task events on, as garrison" if task_events else "task events off"


def summary(report: Report) -> None:
    patch = f", garrison patched with {report.patch}" if report.patch else ""
    print(f"\nmedian of {max(len(report.garrison), len(next(iter(report.raw.values()), [])))} runs, "
          f"{report.backend}{patch}, {report.workers} worker x {report.pool} -c {report.concurrency}:")
    g = _median([r.events_per_s for r in report.garrison])
    if report.garrison:
        ingest = _median([r.ingest_s for r in report.garrison])
        total = _median([r.total_s for r in report.garrison])
        print(f"  garrison     {g:8.0f} events/s   end-to-end {total:.2f} s, of which ingest_many {ingest:.2f} s")
    for name, runs in report.raw.items():
        raw = _median([r.tasks_per_s for r in runs])
        total = _median([r.total_s for r in runs])
        ratio = f"   garrison/raw = {g / raw:.1f}x" if g else ""
        print(f"  raw Celery   {raw:8.0f} tasks/s    end-to-end {total:.2f} s for {runs[0].tasks} tasks "
              f"({name}){ratio}")


if __name__ == "__main__":
    main()
