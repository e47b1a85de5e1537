"""A pulse over many entities: garrison next to the naive approach (one Celery task per entity), same run.

garrison: N entities of casern's inquiry machine (``benchmarks/pulse_apps.py``, no listener), each inquired
an hour ago (``initialInquiry``, ``ingest_many`` in chunks, applied by the worker, then ``ANALYZE``: the
server runs with ``autovacuum = off``). A ``checkTimeout`` schedule is saved with a far-future cron (so
nothing else opens a slot), one slot is opened at now, and its ``garrison.pulse`` task is published
(``CeleryPublisher.publish_pulse``). Timed from that publish until every entity's state is ``timeout``
(a COUNT polled every 0.25 s). The fan-out time is the slot's ``finished_at`` (its last page committed)
minus the publish time. One worker ``celery -A garrison.tasks worker --pool prefork -c 2``, no beat;
each page size (``GARRISON_PULSE_CHUNK``, ``--chunks``) gets fresh tables and a fresh worker.

naive: the same N states in a plain table (``bench_raw_inquiries``); the driver publishes one
``bench.check_timeout`` task per entity (what a beat task looping over entities would do), each locking
the row (``SELECT ... FOR UPDATE``), applying the reducer in Python and writing it back, then counting
itself done (Redis ``INCR``). Timed from the first publish until every task counted itself done. Same
broker, garrison's Celery configuration (JSON, late ack, task events on), same worker flags.

Both sides are warmed up (both pool processes connected, modules imported) before timing. One more garrison
run (``--patch NAMES``, none by default) can have optimizations of ``benchmarks/proposals.py``
installed in its worker (``benchmarks.patched_worker``), to show what they would gain here.

    BENCH_PG_URL=postgresql://postgres@127.0.0.1:5432/test_h3 BENCH_REDIS_URL=redis://127.0.0.1:6379/13 \\
        python benchmarks/pulses.py                       # 100,000 entities, pages of 1000
    python benchmarks/pulses.py --entities 20000 --chunks 1000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

from benchmarks.procs import wait_for, worker  # noqa: E402
from benchmarks.throughput import TENANT, WARMUP_TENANT, fresh, pg_url  # noqa: E402
from garrison.client import Garrison  # noqa: E402
from garrison.config import Settings  # noqa: E402
from garrison.pulses.fanout import open_slot, save_schedule  # noqa: E402
from garrison.pulses.schedules import PulseSchedule  # noqa: E402
from garrison.tasks.publisher import CeleryPublisher  # noqa: E402

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
PG_SCHEMA = "garrison_bench_pulses"
REDIS_URL = "redis://127.0.0.1:6379/14"
AUTOMATION = "inquiry_bench"
POLL = 0.25


# --fresh: never ANALYZE (set by main).
FRESH = False


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--entities", type=int, default=100_000)
    p.add_argument("--naive", type=int, default=None, help="entities of the naive side (default: --entities; "
                                                           "0 skips it)")
    p.add_argument("--chunks", default="1000", help="GARRISON_PULSE_CHUNK values, one garrison run each")
    p.add_argument("--ingest-chunk", type=int, default=10_000, help="events per ingest_many call in the setup")
    p.add_argument("--where", action="store_true",
                   help='the schedule filters on the state: where={"status": ["inquired"]} (every entity matches)')
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--pool", default="prefork")
    p.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", PG_URL))
    p.add_argument("--pg-schema", default=PG_SCHEMA)
    p.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", REDIS_URL))
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--fresh", action="store_true",
                   help="never ANALYZE: the tables as a fresh install or a bulk import leaves them (no statistics)")
    p.add_argument("--patch", default="", help="one more garrison run (first page size) with these "
                   "optimizations of benchmarks/proposals.py in its worker (not merged; '' for none)")
    p.add_argument("--profile", action="store_true",
                   help="no worker: time the fan-out pages and the engine inline, SQL per statement kind")
    p.add_argument("--verbose-profile", action="store_true", help="with --profile: cProfile's top functions")
    args = p.parse_args(argv)
    args.naive = args.entities if args.naive is None else args.naive
    args.chunk_list = [int(c) for c in args.chunks.split(",") if c.strip()]
    return args


def settings_for(args: argparse.Namespace, data_dir: Path, chunk: int = 1000) -> Settings:
    return Settings(
        database_url=pg_url(args.pg_url, args.pg_schema), broker_url=args.redis_url, data_dir=data_dir,
        automations=("benchmarks.pulse_apps",), tenant=TENANT, log_level="WARNING", pulse_chunk=chunk,
    )


def scalar(client: Garrison, sql: str, **params: Any) -> Any:
    with client.db.engine.connect() as conn:
        return conn.execute(text(sql), {"t": TENANT, **params}).scalar()


def analyze(client: Garrison) -> None:
    """As autoanalyze would (the server runs with ``autovacuum = off``)."""
    if FRESH:
        return
    with client.db.engine.begin() as conn:
        for table in ("garrison_events", "garrison_streams", "garrison_cursors", "garrison_entities",
                      "garrison_state_versions", "garrison_pulse_slots", "garrison_schedules"):
            conn.execute(text(f"ANALYZE {table}"))


ENTITIES_SQL = "SELECT count(*) FROM garrison_entities WHERE tenant = :t AND automation = 'inquiry_bench'"
TIMED_OUT_SQL = ENTITIES_SQL + " AND state->>'status' = 'timeout'"


# -- garrison ----------------------------------------------------------------------------------------


def run_garrison(args: argparse.Namespace, chunk: int, tmp: Path, patch: str = "") -> dict[str, Any]:
    settings = settings_for(args, tmp / f"data{chunk}", chunk)
    fresh(settings, args)
    client = Garrison(settings)
    when = time.time() - 3600
    log = tmp / f"garrison-{chunk}.log"
    try:
        app, env = ("benchmarks.patched_worker:app", {"BENCH_PATCH": patch}) if patch else (
            "garrison.tasks", {})
        with worker(app, settings, log, concurrency=args.concurrency, pool=args.pool,
                    **env) as proc:
            # Warm-up: both pool processes import the machine and connect.
            client.ingest_many({"name": "initialInquiry", "key": f"w{i}", "data": {"when": when},
                                "target": AUTOMATION, "tenant": WARMUP_TENANT} for i in range(8))
            wait_for(lambda: scalar(client, ENTITIES_SQL, t=WARMUP_TENANT) == 8, 120, "the warm-up", proc)

            t0 = time.perf_counter()
            for start in range(0, args.entities, args.ingest_chunk):
                client.ingest_many(
                    {"name": "initialInquiry", "key": f"i{n:07d}", "data": {"when": when}, "target": AUTOMATION}
                    for n in range(start, min(args.entities, start + args.ingest_chunk))
                )
                analyze(client)
            wait_for(lambda: scalar(client, ENTITIES_SQL) == args.entities, args.timeout, "the entities", proc, 0.2)
            setup = time.perf_counter() - t0
            analyze(client)
            time.sleep(1)

            now = client.clock.now()
            where = {"status": ["inquired"]} if args.where else None  # casern's filter: open inquiries
            schedule_id = save_schedule(client.db, TENANT, PulseSchedule(
                "timeouts", AUTOMATION, "checkTimeout", cron="0 0 1 1 *", where=where), now)
            opened = open_slot(client.db, TENANT, schedule_id, now, now)
            assert opened is not None and opened.status == "running"
            published_at = time.time()
            t1 = time.perf_counter()
            CeleryPublisher(settings).publish_pulse(TENANT, opened.id, "timeouts")
            wait_for(lambda: scalar(client, TIMED_OUT_SQL) >= args.entities, args.timeout, "the pulse", proc, POLL)
            wall = time.perf_counter() - t1
            finished = scalar(client, "SELECT extract(epoch FROM finished_at) FROM garrison_pulse_slots "
                                      "WHERE tenant = :t AND id = :id AND status = 'done'", id=opened.id)
            last_state = scalar(client, "SELECT extract(epoch FROM max(updated_at)) FROM garrison_entities "
                                        "WHERE tenant = :t AND automation = 'inquiry_bench'")
            out = {
                "entities": args.entities, "chunk": chunk, "patch": patch, "setup_s": setup, "wall_s": wall,
                "per_s": args.entities / wall,
                "fan_out_s": None if finished is None else float(finished) - published_at,
                "last_applied_s": None if last_state is None else float(last_state) - published_at,
                "pulse_events": scalar(client, "SELECT count(*) FROM garrison_events WHERE tenant = :t "
                                               "AND idempotency_key LIKE 'garrison/pulse:%'"),
                "failures": scalar(client, "SELECT count(*) FROM garrison_failures"),
            }
    except BaseException:
        print(log.read_text(errors="replace")[-4000:], file=sys.stderr)
        raise
    finally:
        client.db.dispose()
    if out["pulse_events"] != args.entities or out["failures"]:
        out["problems"] = f"{out['pulse_events']} pulse events for {args.entities} entities, {out['failures']} failures"
    return out


# -- naive -------------------------------------------------------------------------------------------


def run_naive(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import psycopg
    import redis

    from benchmarks.pulse_apps import DONE_KEY, RAW_QUEUE, RAW_TABLE, RAW_TASK, create_raw_pulse_app

    settings = settings_for(args, tmp / "data-naive")
    raw_pg = pg_url(args.pg_url, args.pg_schema)
    with psycopg.connect(args.pg_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{args.pg_schema}"')
    n, warm = args.naive, 8
    with psycopg.connect(raw_pg, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {RAW_TABLE}")
        conn.execute(f"CREATE TABLE {RAW_TABLE} (key text PRIMARY KEY, state jsonb NOT NULL)")
        state = json.dumps({"status": "inquired", "when": time.time() - 3600})
        with conn.cursor().copy(f"COPY {RAW_TABLE} (key, state) FROM STDIN") as copy:
            for i in range(n):
                copy.write_row((f"i{i:07d}", state))
            for i in range(warm):
                copy.write_row((f"w{i}", state))
        conn.execute(f"ANALYZE {RAW_TABLE}")
    counter = redis.Redis.from_url(args.redis_url)
    counter.flushdb()
    app = create_raw_pulse_app(settings)
    log = tmp / "naive.log"
    env = {"BENCH_RAW_PG": raw_pg, "BENCH_COUNTER": args.redis_url}
    try:
        with worker("benchmarks.pulse_apps:raw_pulse_app", settings, log, queue=RAW_QUEUE,
                    concurrency=args.concurrency, pool=args.pool, **env) as proc:
            now = time.time()
            for i in range(warm):
                app.send_task(RAW_TASK, args=[f"w{i}", now])
            wait_for(lambda: int(counter.get(DONE_KEY) or 0) >= warm, 120, "the naive warm-up", proc)
            counter.delete(DONE_KEY)
            t0 = time.perf_counter()
            with app.producer_or_acquire() as producer:
                for i in range(n):
                    app.send_task(RAW_TASK, args=[f"i{i:07d}", now], producer=producer)
            published = time.perf_counter() - t0
            wait_for(lambda: int(counter.get(DONE_KEY) or 0) >= n, args.timeout, "the naive pulse", proc, POLL)
            wall = time.perf_counter() - t0
    except BaseException:
        print(log.read_text(errors="replace")[-4000:], file=sys.stderr)
        raise
    with psycopg.connect(raw_pg) as conn:
        timed_out = conn.execute(f"SELECT count(*) FROM {RAW_TABLE} WHERE key LIKE 'i%' "
                                 "AND state->>'status' = 'timeout'").fetchone()[0]
    out = {"entities": n, "publish_s": published, "wall_s": wall, "per_s": n / wall}
    if timed_out != n:
        out["problems"] = f"{timed_out} of {n} rows timed out"
    return out


# -- report ------------------------------------------------------------------------------------------


def profile(args: argparse.Namespace) -> dict[str, Any]:
    """Where a pulse's time goes, without Celery: ``fan_out_chunk`` page by page, then the engine applying
    the pulse events ``publish_batch`` keys at a time (what one ``garrison.process`` task does), inline
    in this process with a publisher that publishes nothing. SQL time is summed per statement kind
    (DBAPI execute: the round trip and the server's work); ``python`` is the rest."""
    import cProfile
    import pstats

    from benchmarks.profile_engine import SqlTimer
    from garrison.core.publisher import NullPublisher
    from garrison.core.runner import Runner
    from garrison.pulses.fanout import fan_out_chunk

    chunk = args.chunk_list[0]
    with tempfile.TemporaryDirectory(prefix="garrison-bench-pulses-") as tmp:
        settings = settings_for(args, Path(tmp), chunk)
        fresh(settings, args)
        client = Garrison(settings, publisher=NullPublisher())
        when = time.time() - 3600
        for start in range(0, args.entities, args.ingest_chunk):
            client.ingest_many(
                {"name": "initialInquiry", "key": f"i{n:07d}", "data": {"when": when}, "target": AUTOMATION}
                for n in range(start, min(args.entities, start + args.ingest_chunk))
            )
            analyze(client)
        runner = Runner(client)
        runner.run_pending(TENANT, effects=False)
        analyze(client)
        now = client.clock.now()
        schedule_id = save_schedule(client.db, TENANT, PulseSchedule(
            "timeouts", AUTOMATION, "checkTimeout", cron="0 0 1 1 *"), now)
        opened = open_slot(client.db, TENANT, schedule_id, now, now)
        assert opened is not None
        timer = SqlTimer()
        timer.attach(client.db.engine)
        out: dict[str, Any] = {"entities": args.entities, "chunk": chunk}
        on = args.verbose_profile  # cProfile slows the Python part down: only when asked
        prof = cProfile.Profile()

        keys: list[str] = []
        t0 = time.perf_counter()
        if on:
            prof.enable()
        while (events := fan_out_chunk(client.db, TENANT, opened.id, client.clock.now(), chunk)) is not None:
            keys.extend(e.key for e in events)
        if on:
            prof.disable()
        fan_out = time.perf_counter() - t0
        out["fan_out"] = {"wall_s": fan_out, "sql": {k: v[0] for k, v in timer.by_kind.items()},
                          "calls": {k: v[1] for k, v in timer.by_kind.items()}}
        fan_prof = prof
        timer.reset()

        prof = cProfile.Profile()
        batch = settings.publish_batch
        t0 = time.perf_counter()
        if on:
            prof.enable()
        for start in range(0, len(keys), batch):
            runner.run_keys(TENANT, keys[start : start + batch])
        if on:
            prof.disable()
        apply = time.perf_counter() - t0
        out["apply"] = {"wall_s": apply, "sql": {k: v[0] for k, v in timer.by_kind.items()},
                        "calls": {k: v[1] for k, v in timer.by_kind.items()}}
        timed_out = scalar(client, TIMED_OUT_SQL)
        client.db.dispose()
    print(f"profile: {args.entities:,} entities, inline, pages of {chunk}, engine batches of {batch} keys "
          f"({timed_out:,} timed out)")
    for phase, p_ in (("fan_out", fan_prof), ("apply", prof)):
        part = out[phase]
        sql = sum(part["sql"].values())
        print(f"\n  {phase}: {part['wall_s']:.2f} s = {args.entities / part['wall_s']:,.0f} entities/s; "
              f"SQL {sql:.2f} s, python {part['wall_s'] - sql:.2f} s")
        for kind, took in sorted(part["sql"].items(), key=lambda kv: -kv[1]):
            print(f"    {took:7.3f} s  {part['calls'][kind]:6d} calls  {kind}")
        if args.verbose_profile:
            pstats.Stats(p_).sort_stats("cumulative").print_stats(25)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    global FRESH
    args = parse(argv)
    FRESH = args.fresh
    if args.profile:
        return profile(args)
    print(f"pulses: checkTimeout over {args.entities:,} entities, PostgreSQL + Redis, 1 worker x {args.pool} "
          f"-c {args.concurrency}; garrison pages of {', '.join(map(str, args.chunk_list))}; naive: "
          f"{args.naive:,} tasks", flush=True)
    report: dict[str, Any] = {"at": datetime.now(UTC).isoformat(), "garrison": [], "naive": None}
    with tempfile.TemporaryDirectory(prefix="garrison-bench-pulses-") as tmp:
        runs = [(chunk, "") for chunk in args.chunk_list] + ([(args.chunk_list[0], args.patch)] if args.patch else [])
        for chunk, patch in runs:
            g = run_garrison(args, chunk, Path(tmp), patch)
            report["garrison"].append(g)
            name = f"garrison + {patch} (not merged)" if patch else "garrison"
            print(f"  {name}, pages of {chunk}: {g['per_s']:,.0f} entities/s, wall {g['wall_s']:.2f} s (fan-out "
                  f"done after {g['fan_out_s']:.2f} s, last state after {g['last_applied_s']:.2f} s; setup "
                  f"{g['setup_s']:.1f} s){'  PROBLEM: ' + g['problems'] if 'problems' in g else ''}", flush=True)
        if args.naive:
            nv = run_naive(args, Path(tmp))
            report["naive"] = nv
            print(f"  naive, a task per entity: {nv['per_s']:,.0f} entities/s, wall {nv['wall_s']:.2f} s for "
                  f"{nv['entities']:,} (publishing {nv['publish_s']:.2f} s)"
                  f"{'  PROBLEM: ' + nv['problems'] if 'problems' in nv else ''}", flush=True)
    print_table(args, report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return report


def print_table(args: argparse.Namespace, report: dict[str, Any]) -> None:
    nv = report["naive"]
    print(f"\n| checkTimeout over {args.entities:,} entities | entities/s | wall | fan-out done | vs naive |")
    print("|---|---|---|---|---|")
    for g in report["garrison"]:
        ratio = f"**{g['per_s'] / nv['per_s']:.1f}x**" if nv else ""
        patch = f" + `{g['patch']}` (not merged)" if g["patch"] else ""
        where = ", where status in (inquired)" if args.where else ""
        print(f"| garrison{patch}, pages of {g['chunk']}{where} | **{g['per_s']:,.0f}** | {g['wall_s']:.1f} s | "
              f"{g['fan_out_s']:.1f} s | {ratio} |")
    if nv:
        print(f"| naive Celery, one task per entity ({nv['entities']:,}) | {nv['per_s']:,.0f} | {nv['wall_s']:.1f} s "
              f"| (publishing {nv['publish_s']:.1f} s) | 1x |")
    label = {id(g): f"pages of {g['chunk']}{' + ' + g['patch'] if g['patch'] else ''}" for g in report["garrison"]}
    targets = [f"under 30 s: {'yes' if g['wall_s'] < 30 else 'NO'} ({label[id(g)]})" for g in report["garrison"]]
    if nv:
        targets += [f"10x naive: {'yes' if g['per_s'] >= 10 * nv['per_s'] else 'NO'} ({label[id(g)]})"
                    for g in report["garrison"]]
    print("  targets: " + "; ".join(targets))


if __name__ == "__main__":
    main()
