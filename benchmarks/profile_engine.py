"""Where garrison's time goes, without Celery: ``ingest_many`` and inline ``Engine.process`` on PostgreSQL.

The same workload as benchmarks/throughput.py (N events round-robin over K keys, reducer machine
``tally``), with a publisher that publishes nothing; the engine is driven inline, one
``Engine.process`` per ``publish_batch`` keys (what one ``garrison.process`` task does). Each phase is
timed wall-clock; time spent inside DBAPI ``execute``/``executemany`` calls (psycopg's query
conversion, parameter dumping, the round trip and the server's work) is summed per statement kind, so
``python`` below is what is left: SQLAlchemy compilation, garrison's own per-message code, JSON.

``--variant`` runs the same workload with optimizations of benchmarks/proposals.py patched in (this
process only; garrison/ is not modified), to measure what each proposal gains. Variants are interleaved
round by round, and the best (least disturbed) run of each is compared, next to the CPU seconds spent by
this process and by its PostgreSQL backends (read from /proc: a figure that other load barely moves).

    python benchmarks/profile_engine.py                         # baseline, then each variant
    python benchmarks/profile_engine.py --variant baseline --cprofile 30
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import event, text  # noqa: E402

from benchmarks.proposals import install  # noqa: E402
from garrison.client import Garrison  # noqa: E402
from garrison.config import Settings  # noqa: E402
from garrison.core.publisher import NullPublisher  # noqa: E402

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
SCHEMA = "garrison_bench_profile"
TENANT = "bench"

# -- measuring ----------------------------------------------------------------------------------------


class SqlTimer:
    """Sums wall time spent inside DBAPI execute calls, per statement kind."""

    def __init__(self) -> None:
        self.by_kind: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
        self._start: list[float] = []

    def attach(self, engine: Any) -> None:
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, conn: Any, cursor: Any, statement: str, *a: Any) -> None:
        self._start.append(time.perf_counter())

    def _after(self, conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
        took = time.perf_counter() - self._start.pop()
        entry = self.by_kind[_kind(statement, executemany)]
        entry[0] += took
        entry[1] += 1

    def total(self) -> float:
        return sum(v[0] for v in self.by_kind.values())

    def reset(self) -> None:
        self.by_kind.clear()


def _kind(statement: str, executemany: bool) -> str:
    words = statement.split()
    verb = words[0].upper() if words else "?"
    table = next((w for w in words if w.startswith("garrison_")), "")
    if verb == "SELECT" and "FOR UPDATE" in statement:
        verb = "SELECT FOR UPDATE"
    if verb == "INSERT" and "ON CONFLICT" in statement:
        verb = "UPSERT"
    return f"{verb} {table}{' (executemany)' if executemany else ''}"


# -- variants -------------------------------------------------------------------------------------------


@contextmanager
def variant(name: str, client: Garrison) -> Iterator[None]:
    """Run with the optimizations of benchmarks/proposals.py named in ``name`` installed."""
    client.db.engine.dispose()  # so that connection-level settings (``async``) apply, and are undone
    with install(name):
        yield
    client.db.engine.dispose()


VARIANTS = ["baseline", "imv", "unnest", "nodata", "nodata+async"]

# -- the workload ---------------------------------------------------------------------------------------


def fresh(client: Garrison, args: argparse.Namespace) -> None:
    with client.db.engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{args.schema}"'))
    client.db.drop_all()
    client.init_db()


class ServerCpu:
    """CPU time of this script's PostgreSQL backends (found by application_name; same machine only)."""

    def __init__(self, client: Garrison, app_name: str) -> None:
        self.client = client
        self.app_name = app_name
        self.available = Path("/proc").is_dir()

    def snapshot(self) -> dict[int, float]:
        if not self.available:
            return {}
        with self.client.db.engine.connect() as conn:
            pids = conn.execute(text(
                "SELECT pid FROM pg_stat_activity WHERE application_name = :a"), {"a": self.app_name}).scalars().all()
        out: dict[int, float] = {}
        tick = os.sysconf("SC_CLK_TCK")
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                self.available = False  # not the same machine (or not allowed): no server figure
                return {}
            out[pid] = (int(fields[11]) + int(fields[12])) / tick
        return out

    @staticmethod
    def delta(before: dict[int, float], after: dict[int, float]) -> float:
        return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def run_once(client: Garrison, args: argparse.Namespace, timer: SqlTimer, server: ServerCpu,
             profiler: cProfile.Profile | None) -> dict[str, Any]:
    fresh(client, args)
    events = [{"name": "add", "key": f"k{i % args.keys:06d}", "data": {"n": 1}, "target": "tally"}
              for i in range(args.events)]
    keys = sorted({e["key"] for e in events})
    client.ingest("add", "warm", {"n": 1}, target="tally", tenant="warmup")  # connect, import, compile
    client.engine.process("warmup", ["warm"])
    out: dict[str, Any] = {}

    def phase(name: str, work: Any) -> None:
        timer.reset()
        srv0 = server.snapshot()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        if profiler:
            profiler.enable()
        work()
        if profiler:
            profiler.disable()
        out[name] = time.perf_counter() - t0
        out[name + "_cpu"] = time.process_time() - cpu0
        out[name + "_server"] = server.delta(srv0, server.snapshot())
        out[name + "_sql"] = dict(timer.by_kind)

    def process_all() -> None:
        engine = client.engine
        batch = client.settings.publish_batch
        for start in range(0, len(keys), batch):
            engine.process(TENANT, keys[start : start + batch])

    phase("ingest", lambda: client.ingest_many(events))
    phase("process", process_all)
    with client.db.engine.connect() as conn:
        total = conn.execute(text(
            "SELECT sum((state->>'count')::int) FROM garrison_entities WHERE tenant = :t"), {"t": TENANT}).scalar()
    if total != args.events:
        raise AssertionError(f"sum of counts is {total}, expected {args.events}")
    return out


def show_phase(title: str, run: dict[str, Any], phase: str, server: bool) -> None:
    wall, by_kind = run[phase], run[phase + "_sql"]
    in_sql = sum(v[0] for v in by_kind.values())
    srv = f", PostgreSQL backend CPU {run[phase + '_server']:.3f} s" if server else ""
    print(f"    {title}: {wall:.3f} s wall; CPU: this process {run[phase + '_cpu']:.3f} s{srv}")
    print(f"      inside DBAPI execute calls {in_sql:.3f} s; outside (garrison + SQLAlchemy + commit) "
          f"{wall - in_sql:.3f} s")
    for kind, (took, calls) in sorted(by_kind.items(), key=lambda kv: -kv[1][0]):
        if took >= 0.005:
            print(f"      {took:7.3f} s  {int(calls):5d} calls  {kind}")


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--keys", type=int, default=2_000)
    p.add_argument("--repeat", type=int, default=5, help="rounds; variants are interleaved within each round")
    p.add_argument("--variant", action="append", help=f"baseline, or parts joined by '+' (default: {VARIANTS})")
    p.add_argument("--cprofile", type=int, default=0, help="print the top N functions (by own time)")
    p.add_argument("--pg-url", default=PG_URL)
    p.add_argument("--schema", default=SCHEMA)
    args = p.parse_args(argv)

    app_name = f"garrison-profile-{os.getpid()}"
    sep = "&" if "?" in args.pg_url else "?"
    url = f"{args.pg_url}{sep}options=-csearch_path%3D{args.schema}&application_name={app_name}"
    settings = Settings(database_url=url, automations=("benchmarks.apps",), tenant=TENANT)
    client = Garrison(settings, publisher=NullPublisher())
    timer = SqlTimer()
    timer.attach(client.db.engine)
    server = ServerCpu(client, app_name)
    names = args.variant or VARIANTS
    print(f"profile: {args.events} events over {args.keys} keys on PostgreSQL: ingest_many, then inline "
          f"Engine.process per {settings.publish_batch} keys. {args.repeat} rounds, variants interleaved; "
          f"best (min) and median wall time")
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    profilers = {n: cProfile.Profile() for n in names} if args.cprofile else {}
    for _ in range(args.repeat):
        for name in names:
            with variant(name, client):
                runs[name].append(run_once(client, args, timer, server, profilers.get(name)))
    figures: dict[str, dict[str, float]] = {}
    for name in names:
        rs = runs[name]
        f = {k: min(r[k] for r in rs) for k in ("ingest", "process")}
        f.update({k + "_median": statistics.median(r[k] for r in rs) for k in ("ingest", "process")})
        f.update({k: statistics.median(r[k] for r in rs)
                  for k in ("ingest_cpu", "process_cpu", "ingest_server", "process_server")})
        figures[name] = f
        best = min(rs, key=lambda r: r["ingest"] + r["process"])
        print(f"\n  {name}: ingest_many {f['ingest']:.3f} s best / {f['ingest_median']:.3f} s median "
              f"({args.events / f['ingest']:,.0f} events/s); Engine.process {f['process']:.3f} s best / "
              f"{f['process_median']:.3f} s median ({args.events / f['process']:,.0f} events/s)")
        show_phase("ingest_many (best run)", best, "ingest", server.available)
        show_phase("Engine.process (best run)", best, "process", server.available)
        if name in profilers:
            stream = io.StringIO()
            pstats.Stats(profilers[name], stream=stream).sort_stats("tottime").print_stats(args.cprofile)
            print(_trim(stream.getvalue()))
    if "baseline" in figures and len(figures) > 1:
        base = figures["baseline"]
        print("\n  speed-up against baseline, best runs (ingest_many, Engine.process, both); "
              "median CPU seconds client+server (ingest, process):")
        bc = (base["ingest_cpu"] + base["ingest_server"], base["process_cpu"] + base["process_server"])
        print(f"    {'baseline':28s} {'':24s}  cpu {bc[0]:.2f} s  {bc[1]:.2f} s")
        for name, f in figures.items():
            if name != "baseline":
                both = (base["ingest"] + base["process"]) / (f["ingest"] + f["process"])
                cpu = (f["ingest_cpu"] + f["ingest_server"], f["process_cpu"] + f["process_server"])
                print(f"    {name:28s} {base['ingest'] / f['ingest']:5.2f}x  {base['process'] / f['process']:5.2f}x"
                      f"  {both:5.2f}x   cpu {cpu[0]:.2f} s  {cpu[1]:.2f} s")
    client.db.dispose()
    return figures


def _trim(report: str) -> str:
    root = str(ROOT) + "/"
    site = report.replace(root, "")
    return "\n".join("      " + line for line in site.splitlines() if line.strip())


if __name__ == "__main__":
    main()
