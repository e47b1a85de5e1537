"""Durable timers at scale: 100,000 far timers held in SQL, 10,000 due within the minute, one real worker.

Setup, the way users create timers: journey runs that sleep (``benchmarks/journey_apps.py:sleeper``),
started by ``bench/sleep`` events ingested with ``ingest_many`` in chunks and applied by one real
``celery -A garrison.tasks worker --pool prefork -c 2 --beat`` (the relay runs in its beat):

1. far: 100,000 runs sleeping until a time uniformly drawn in [now + 1 day, now + 7 days] (beyond
   ``GARRISON_TIMER_HORIZON``, so they are SQL rows only, no ETA task);
2. near: 10,000 runs sleeping until a time uniformly drawn in [t + ``--near-start``, t + ``--near-start``
   + ``--near-window``] (default 30 s to 60 s after the near ingest starts: all due within the minute;
   the start leaves the worker time to apply the 10,000 triggers first), so each becomes an ETA task.

Measured: the worker's memory (sum over its process group: main process, 2 pool processes, beat), sampled
every 0.5 s from ``/proc`` during the whole run; the lateness of the 10,000 near timers
(``garrison_timers.fired_at - due_at``) and of their runs' completion (``garrison_runs.updated_at -
due_at``, the engine's clock when it applied the timer's event); and the checks: one ``garrison/timer``
event per near timer, one resumption (one state version from a timer event) per run, 10,000 runs
completed, 100,000 still sleeping with their timers pending and unpublished, none fired early.

    python benchmarks/timers.py                         # PostgreSQL + Redis (BENCH_PG_URL / BENCH_REDIS_URL)
    python benchmarks/timers.py --far 20000 --near 2000 # smaller
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

from benchmarks.procs import RssSampler, group_detail, mb, wait_for, worker  # noqa: E402
from benchmarks.throughput import applied, fresh, pg_url  # noqa: E402
from garrison.client import Garrison  # noqa: E402
from garrison.config import Settings  # noqa: E402
from garrison.core.timers import overdue, promote, timer_tenants  # noqa: E402

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
PG_SCHEMA = "garrison_bench_timers"
REDIS_URL = "redis://127.0.0.1:6379/14"
TENANT = "bench"
WARMUP_TENANT = "warmup"


# --fresh: never ANALYZE (set by main).
FRESH = False


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--far", type=int, default=100_000, help="timers due in 1 to 7 days")
    p.add_argument("--near", type=int, default=10_000, help="timers due within the minute")
    p.add_argument("--near-start", type=float, default=30.0, help="first near due time, seconds after their ingest")
    p.add_argument("--near-window", type=float, default=30.0, help="near due times are spread over this many seconds")
    p.add_argument("--chunk", type=int, default=10_000, help="events per ingest_many call")
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", PG_URL))
    p.add_argument("--pg-schema", default=PG_SCHEMA)
    p.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", REDIS_URL))
    p.add_argument("--timeout", type=float, default=1200.0)
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--fresh", action="store_true",
                   help="never ANALYZE: the tables as a fresh install or a bulk import leaves them (no statistics)")
    return p.parse_args(argv)


def scalar(client: Garrison, sql: str, **params: Any) -> Any:
    with client.db.engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def rows(client: Garrison, sql: str, **params: Any) -> list[Any]:
    with client.db.engine.connect() as conn:
        return list(conn.execute(text(sql), params).all())


def analyze(client: Garrison) -> None:
    """ANALYZE garrison's tables, as autovacuum would once they grew. The benchmark server runs with
    ``autovacuum = off``: without statistics the planner takes the 100,000-row tables for empty, and the
    engine's ``pending`` query (streams LEFT JOIN cursors, ``key IN (...)``) turns into hash joins over
    every stream of the tenant (0.3 to 0.7 s a call instead of under 1 ms)."""
    if FRESH:
        return
    with client.db.engine.begin() as conn:
        for table in ("garrison_events", "garrison_streams", "garrison_cursors", "garrison_entities",
                      "garrison_state_versions", "garrison_timers", "garrison_runs"):
            conn.execute(text(f"ANALYZE {table}"))


def ingest(client: Garrison, events: list[dict[str, Any]], chunk: int) -> float:
    t0 = time.perf_counter()
    for start in range(0, len(events), chunk):
        client.ingest_many(events[start : start + chunk])
        analyze(client)
    return time.perf_counter() - t0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    global FRESH
    args = parse(argv)
    FRESH = args.fresh
    rng = random.Random(args.seed)
    out: dict[str, Any] = {"far": args.far, "near": args.near}
    print(f"timers: {args.far:,} far timers (1-7 days) + {args.near:,} due {args.near_start:.0f}-"
          f"{args.near_start + args.near_window:.0f} s after their ingest, created by sleeping journeys; "
          f"PostgreSQL + Redis, 1 worker x prefork -c {args.concurrency} --beat", flush=True)
    with tempfile.TemporaryDirectory(prefix="garrison-bench-timers-") as tmp:
        settings = Settings(
            database_url=pg_url(args.pg_url, args.pg_schema), broker_url=args.redis_url, data_dir=Path(tmp),
            automations=("benchmarks.journey_apps",), tenant=TENANT, log_level="WARNING",
        )
        fresh(settings, args)
        client = Garrison(settings)
        log = Path(tmp) / "worker.log"
        try:
            with worker("garrison.tasks", settings, log, concurrency=args.concurrency,
                        beat=True) as proc, RssSampler(proc.pid) as mem:
                measure(args, client, proc, mem, rng, out)
        except BaseException:
            print(log.read_text(errors="replace")[-4000:], file=sys.stderr)
            raise
        summarize_memory(mem, out)
        check(args, client, out)
        relay_cost(client, settings, out)
        client.db.dispose()
    report(out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))
    return out


def measure(args: argparse.Namespace, client: Garrison, proc: Any, mem: RssSampler, rng: random.Random,
            out: dict[str, Any]) -> None:
    # Warm-up: both pool processes have imported the journeys, connected, fired a timer.
    mem.phase = "warm-up"
    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    warm = [{"name": "bench/sleep", "key": f"w{i}", "data": {"until": soon}, "tenant": WARMUP_TENANT}
            for i in range(8)]
    client.ingest_many(warm)
    wait_for(lambda: scalar(client, "SELECT count(*) FROM garrison_runs WHERE tenant = :t AND status = "
                            "'completed'", t=WARMUP_TENANT) == len(warm), 120, "the warm-up", proc)
    time.sleep(2)

    # 1. far timers.
    mem.phase = "far setup"
    now = datetime.now(UTC)
    far = [
        {"name": "bench/sleep", "key": f"f{i:06d}",
         "data": {"until": (now + timedelta(days=1 + 6 * rng.random())).isoformat()}}
        for i in range(args.far)
    ]
    t0 = time.perf_counter()
    out["far_ingest_s"] = ingest(client, far, args.chunk)
    wait_for(lambda: applied(client, TENANT) >= args.far, args.timeout, "the far timers' runs", proc, 0.2)
    out["far_setup_s"] = time.perf_counter() - t0
    print(f"  far: {args.far:,} runs sleeping in {out['far_setup_s']:.1f} s "
          f"(ingest_many {out['far_ingest_s']:.1f} s)", flush=True)
    mem.phase = "far idle"
    time.sleep(12)  # two relay sweeps over 100,000 pending timers

    # 2. near timers.
    mem.phase = "near setup"
    base = datetime.now(UTC) + timedelta(seconds=args.near_start)
    near = [
        {"name": "bench/sleep", "key": f"n{i:05d}",
         "data": {"until": (base + timedelta(seconds=args.near_window * rng.random())).isoformat()}}
        for i in range(args.near)
    ]
    first_due = min(e["data"]["until"] for e in near)
    last_due = max(e["data"]["until"] for e in near)
    t0 = time.perf_counter()
    out["near_ingest_s"] = ingest(client, near, args.chunk)
    wait_for(lambda: applied(client, TENANT) >= args.far + args.near, args.timeout, "the near timers' runs", proc,
             0.1)
    out["near_setup_s"] = time.perf_counter() - t0
    margin = (datetime.fromisoformat(first_due) - datetime.now(UTC)).total_seconds()
    out["near_setup_margin_s"] = margin
    out["eta_tasks_hint"] = scalar(client, "SELECT count(DISTINCT date_trunc('second', due_at)) FROM garrison_timers "
                                   "WHERE tenant = :t AND key LIKE 'n%'", t=TENANT)
    print(f"  near: {args.near:,} runs sleeping in {out['near_setup_s']:.1f} s; first due in {margin:.1f} s",
          flush=True)

    # 3. the near timers fire.
    mem.phase = "firing"
    wait_for(lambda: scalar(client, "SELECT count(*) FROM garrison_runs WHERE tenant = :t AND key LIKE 'n%' AND "
                            "status = 'completed'", t=TENANT) >= args.near,
             (datetime.fromisoformat(last_due) - datetime.now(UTC)).total_seconds() + 120,
             "the near runs to complete", proc, 0.2)
    out["fired_done_after_last_due_s"] = (datetime.now(UTC) - datetime.fromisoformat(last_due)).total_seconds()
    mem.phase = "after"
    time.sleep(6)  # one more relay sweep: nothing more may fire
    out["processes"] = [(pid, cmd, round(mb(rss), 1)) for pid, cmd, rss in group_detail(proc.pid)]


def check(args: argparse.Namespace, client: Garrison, out: dict[str, Any]) -> None:
    t = TENANT
    lateness = [float(r[0]) for r in rows(client, "SELECT extract(epoch FROM fired_at - due_at) FROM garrison_timers "
                                                  "WHERE tenant = :t AND key LIKE 'n%' AND status = 'fired'", t=t)]
    resumed = [float(r[0]) for r in rows(
        client,
        "SELECT extract(epoch FROM r.updated_at - tm.due_at) FROM garrison_runs r JOIN garrison_timers tm "
        "ON tm.tenant = r.tenant AND tm.automation = r.automation AND tm.key = r.key "
        "WHERE r.tenant = :t AND r.key LIKE 'n%' AND r.status = 'completed'", t=t)]
    out["near_fired"] = len(lateness)
    out["lateness"] = _stats(lateness)
    out["completion_lateness"] = _stats(resumed)
    out["fired_early"] = sum(1 for v in lateness if v < 0)
    out["timer_events"] = scalar(client, "SELECT count(*) FROM garrison_events WHERE tenant = :t AND "
                                         "name = 'garrison/timer'", t=t)
    out["timer_events_per_timer_max"] = scalar(
        client, "SELECT coalesce(max(c), 0) FROM (SELECT count(*) c FROM garrison_events WHERE tenant = :t AND "
                "name = 'garrison/timer' GROUP BY idempotency_key) x", t=t)
    out["resumptions_per_run_max"] = scalar(
        client, "SELECT coalesce(max(c), 0) FROM (SELECT count(*) c FROM garrison_state_versions WHERE tenant = :t "
                "AND message = 'garrison/timer' GROUP BY key) x", t=t)
    out["near_completed"] = scalar(client, "SELECT count(*) FROM garrison_runs WHERE tenant = :t AND key LIKE 'n%' "
                                           "AND status = 'completed'", t=t)
    out["far_sleeping"] = scalar(client, "SELECT count(*) FROM garrison_runs WHERE tenant = :t AND key LIKE 'f%' "
                                         "AND status = 'sleeping'", t=t)
    out["far_pending"] = scalar(client, "SELECT count(*) FROM garrison_timers WHERE tenant = :t AND key LIKE 'f%' "
                                        "AND status = 'pending' AND published_at IS NULL", t=t)
    out["far_fired"] = scalar(client, "SELECT count(*) FROM garrison_timers WHERE tenant = :t AND key LIKE 'f%' "
                                      "AND status <> 'pending'", t=t)
    out["failures"] = scalar(client, "SELECT count(*) FROM garrison_failures")
    problems = []
    if out["near_fired"] != args.near or out["near_completed"] != args.near:
        problems.append(f"lost: {out['near_fired']} fired, {out['near_completed']} completed of {args.near}")
    if out["timer_events_per_timer_max"] > 1 or out["resumptions_per_run_max"] > 1:
        problems.append("duplicates")
    if out["timer_events"] != args.near:
        problems.append(f"{out['timer_events']} garrison/timer events for {args.near} timers")
    if out["far_sleeping"] != args.far or out["far_pending"] != args.far or out["far_fired"]:
        problems.append(f"far: {out['far_sleeping']} sleeping, {out['far_pending']} pending, {out['far_fired']} fired")
    if out["fired_early"] or out["failures"]:
        problems.append(f"{out['fired_early']} fired early, {out['failures']} failures")
    out["problems"] = problems


def relay_cost(client: Garrison, settings: Settings, out: dict[str, Any]) -> None:
    """What one relay sweep's timer queries cost with the far timers pending (median of 5)."""
    now = datetime.now(UTC)
    costs: dict[str, list[float]] = {"timer_tenants": [], "promote": [], "overdue": []}
    for _ in range(5):
        t0 = time.perf_counter()
        timer_tenants(client.db)
        t1 = time.perf_counter()
        promote(client.db, TENANT, now, settings.timer_horizon, 10_000)
        t2 = time.perf_counter()
        overdue(client.db, TENANT, now - timedelta(seconds=settings.relay_after))
        t3 = time.perf_counter()
        costs["timer_tenants"].append(t1 - t0)
        costs["promote"].append(t2 - t1)
        costs["overdue"].append(t3 - t2)
    out["relay_query_ms"] = {k: 1000 * statistics.median(v) for k, v in costs.items()}


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50": pct(values, 0.5), "p90": pct(values, 0.9), "p99": pct(values, 0.99),
            "max": max(values), "min": min(values)}


def report(out: dict[str, Any]) -> None:
    lat, comp = out["lateness"], out["completion_lateness"]
    print(f"\n  near timers fired: {out['near_fired']:,}; lateness fired_at - due_at: p50 {lat.get('p50', 0):.3f} s, "
          f"p99 {lat.get('p99', 0):.3f} s, max {lat.get('max', 0):.3f} s (min {lat.get('min', 0):.3f} s)")
    print(f"  run completed - due_at: p50 {comp.get('p50', 0):.3f} s, p99 {comp.get('p99', 0):.3f} s, "
          f"max {comp.get('max', 0):.3f} s")
    print(f"  duplicates: garrison/timer events {out['timer_events']:,} (max {out['timer_events_per_timer_max']} "
          f"per timer), resumptions per run max {out['resumptions_per_run_max']}")
    print(f"  lost: near runs completed {out['near_completed']:,}/{out['near']:,}; far runs sleeping "
          f"{out['far_sleeping']:,}, far timers pending+unpublished {out['far_pending']:,}, far fired "
          f"{out['far_fired']}, fired early {out['fired_early']}, failures {out['failures']}")
    print("  relay timer queries with the far timers pending (ms): "
          + ", ".join(f"{k} {v:.1f}" for k, v in out["relay_query_ms"].items()))
    for phase, peak in out["rss"].items():
        print(f"  worker memory, {phase:>10}: peak RSS sum {peak['rss_mb']:6.1f} MB (PSS {peak['pss_mb']:6.1f} MB, "
              f"{peak['procs']} processes); last RSS {peak['last_rss_mb']:6.1f} MB")
    for pid, cmd, rss in out.get("processes", []):
        print(f"    process {pid} {cmd[:50]!r}: RSS {rss:.1f} MB at the end")
    print("  PROBLEMS: " + "; ".join(out["problems"]) if out["problems"] else "  checks: all passed")


def summarize_memory(mem: RssSampler, out: dict[str, Any]) -> None:
    phases: dict[str, Any] = {}
    for phase in dict.fromkeys(s.phase for s in mem.samples):
        peak, last = mem.peak(phase), mem.last(phase)
        assert peak is not None and last is not None
        phases[phase] = {"rss_mb": mb(peak.rss), "pss_mb": mb(peak.pss), "procs": peak.procs,
                         "last_rss_mb": mb(last.rss)}
    overall = mem.peak()
    assert overall is not None
    phases["whole run"] = {"rss_mb": mb(overall.rss), "pss_mb": mb(overall.pss), "procs": overall.procs,
                           "last_rss_mb": mb(mem.samples[-1].rss)}
    out["rss"] = phases
    out["rss_samples"] = [(round(s.at, 1), s.phase, round(mb(s.rss), 1)) for s in mem.samples]


if __name__ == "__main__":
    main()
