"""Single-event latency: events sent one at a time, as web apps send them, next to raw Celery in the same run.

garrison: one real worker ``celery -A garrison.tasks worker --pool prefork -c 2 --beat`` (as deployed), fresh
tables. ``--threads`` client threads share one client, as a web process does, and each calls
``client.ingest()`` for ONE event at a time, paced: event ``i`` is due at ``start + i / rate`` (a thread that
falls behind sends at once, so the offered rate is kept while the client can keep it; ``--processes`` runs
that many such client processes, for rates one Python process cannot offer). Each event goes to one of
``--keys`` keys drawn at random (seeded). The automation is the casern-style reducer ``tally``
(benchmarks/apps.py), or with ``--journey`` a journey blocked in ``ctx.wait_for`` that every event wakes
(``latency_pinged`` below; it waits again after each event; ``--journey-timeout 1h`` adds a durable timer
per wait). Before the timed feed every key has its entity (with ``--journey``, a waiting run), and
``ANALYZE`` runs (``--no-analyze`` skips it; the server may run with autovacuum off). Afterwards the run is
checked: the reducer's counts add up to the events sent, no failure.

Per event:

- ingest: how long ``client.ingest()`` took (validate, one transaction, commit, publish).
- picked up: from ``ingest()`` returning until the worker's engine transaction that applied it began (its
  ``garrison_state_versions.created_at``: the engine's clock, read before it opens the transaction).
- applied: from ``ingest()`` returning until the key's cursor ``garrison_cursors.processed_seq`` reached the
  event's seq *and was committed*. A trigger on ``garrison_cursors`` (made by this script in the benchmark's
  schema) calls ``pg_notify``, which PostgreSQL delivers at commit; a listener process (a process: it shares
  no GIL with the client threads) stamps each notification on arrival. Nothing polls. The trigger costs the
  worker's cursor update about 0.2 ms of server time; ``--no-notify`` drops it and reports "picked up" only.

Per rate: p50/p95/p99/max of each, the achieved rate, the backlog (events committed but not applied) when the
feed stops, its growth over the feed (least-squares slope of a 1 s sample) and the time to drain it, CPU per
event (the worker's process group; the client), the share of the machine's CPUs busy, and the load average
(at the end of the feed, and the highest 1-minute figure seen during it). ``--rates 0`` feeds as fast as the
threads go: the applied rate is then the highest sustained one.

raw Celery: one no-op task per event (``bench.latency`` on its own queue, garrison's Celery configuration,
task events on unless ``--raw no-events``) from the same threads at the same rates, in one
``celery -A benchmarks.latency:raw_app worker --pool prefork -c 2`` (no beat). Per task: publish (the
``send_task`` call) and publish-return -> task start (the task stamps ``time.time()`` first and pushes it to
a Redis list), to compare with garrison's ingest and picked-up figures.

    BENCH_PG_URL=postgresql://postgres@127.0.0.1:5432/test BENCH_REDIS_URL=redis://127.0.0.1:6379/14 \\
      .venv/bin/python benchmarks/latency.py                          # 50, 300, 1000 events/s, 30 s each
    .venv/bin/python benchmarks/latency.py --rates 300 --seconds 60 --keys 200000
    .venv/bin/python benchmarks/latency.py --journey --rates 50,300 --raw none
    .venv/bin/python benchmarks/latency.py --rates 0 --seconds 20       # the highest sustained rate

Defaults: database ``test``, schema ``garrison_bench_latency``, Redis database 14 (flushed at the start).
``--app`` / ``--env`` start another worker app (an instrumented one hooks in through ``FEED_HOOKS``).
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import multiprocessing as mp
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

from garrison import JourneyContext, Message, journey  # noqa: E402
from garrison.config import Settings  # noqa: E402

if TYPE_CHECKING:
    from celery import Celery

    from garrison.client import Garrison

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
PG_SCHEMA = "garrison_bench_latency"
REDIS_URL = "redis://127.0.0.1:6379/14"
WARMUP_TENANT = "warmup"
RAW_QUEUE = "bench-latency-raw"
RAW_TASK = "bench.latency"
RAW_LIST = "bench:latency:"
JOURNEY = "latency_pinged"
# Called with ("start" or "end", the run's report, the worker's pid) right before each timed feed starts and
# right after it ends: where a profiler hooks in.
FEED_HOOKS: list[Callable[[str, RunReport, int], None]] = []


# -- what the workers run --------------------------------------------------------------------------------
# garrison's worker imports this module (GARRISON_AUTOMATIONS=benchmarks.apps,benchmarks.latency) for the
# journey; the raw worker runs ``benchmarks.latency:raw_app``, built on first access from the environment.


@journey(JOURNEY, on="lat/start", events=("lat/*",))
def latency_pinged(event: Message, ctx: JourneyContext) -> dict[str, Any]:
    """Waits for ``lat/ping`` again and again: every ping wakes the run, which waits for the next one.
    ``BENCH_LATENCY_JOURNEY_TIMEOUT`` (e.g. ``1h``) gives each wait a timeout, so a durable timer is set and
    cancelled per ping (beyond the timer horizon it is a SQL row only)."""
    timeout = os.environ.get("BENCH_LATENCY_JOURNEY_TIMEOUT") or None
    pings = 0
    while True:
        got = ctx.wait_for("lat/ping", timeout=timeout)
        if got is None:
            return {"pings": pings}
        pings += len(got)


def raw_celery(settings: Settings, *, task_events: bool = True) -> Celery:
    """garrison's Celery configuration on its own queue, with the no-op task that stamps its start."""
    from celery import Celery

    from garrison.tasks.app import celery_config

    app = Celery("bench-latency-raw", set_as_current=False)
    conf = celery_config(settings)
    conf.pop("beat_schedule", None)
    conf.pop("beat_scheduler", None)
    conf["task_default_queue"] = RAW_QUEUE
    conf["worker_send_task_events"] = task_events
    conf["task_send_sent_event"] = task_events
    app.conf.update(conf)
    app.task(name=RAW_TASK, acks_late=True, ignore_result=True)(stamp)
    return app


_redis: Any = None


def stamp(i: int, run: str) -> None:
    """The raw task: note when it started (the first thing it does), in a Redis list per run."""
    started = time.time()
    global _redis
    if _redis is None:
        import redis

        _redis = redis.Redis.from_url(os.environ["BENCH_COUNTER"])
    _redis.rpush(RAW_LIST + run, f"{i} {started:.6f}")


def __getattr__(name: str) -> Any:
    # ``celery -A benchmarks.latency:raw_app``: built on first access, so importing this module for the
    # journey (garrison's worker) or running it (the driver) makes no Celery app.
    if name == "raw_app":
        app = raw_celery(Settings.from_env(), task_events=os.environ.get("BENCH_TASK_EVENTS", "1") != "0")
        globals()["raw_app"] = app
        return app
    raise AttributeError(name)


# -- figures -------------------------------------------------------------------------------------------------


@dataclass
class Dist:
    """Percentiles of one latency, in ms."""

    n: int
    p50: float
    p95: float
    p99: float
    max: float
    mean: float

    @classmethod
    def of(cls, values_s: Sequence[float]) -> Dist | None:
        if not values_s:
            return None
        ms = sorted(v * 1000 for v in values_s)

        def pct(p: float) -> float:
            return ms[max(0, math.ceil(p / 100 * len(ms)) - 1)]  # nearest rank

        return cls(len(ms), pct(50), pct(95), pct(99), ms[-1], statistics.fmean(ms))

    def row(self, label: str) -> str:
        return (f"    {label:<34}{self.p50:9.1f}{self.p95:9.1f}{self.p99:9.1f}{self.max:9.1f}{self.mean:9.1f}"
                f"   (n={self.n})")


@dataclass
class RunReport:
    side: str
    rate: float  # offered events/s (0: as fast as the threads go)
    seconds: float
    keys: int
    threads: int
    sent: int
    achieved_rate: float
    latencies: dict[str, Dist | None] = field(default_factory=dict)
    backlog_end: int = 0  # committed (or published) but not applied (or started) when the feed stopped
    backlog_max: int = 0
    backlog_slope: float = 0.0  # events/s of backlog growth over the feed (least squares)
    drain_s: float = 0.0  # from the feed's end until the last event applied
    not_applied: int = 0
    applied_rate: float = 0.0  # events / (last applied - first sent)
    worker_cpu_ms: float = 0.0  # per event
    worker_idle_cpu: float = 0.0  # share of one CPU the idle worker group uses (beat, timers, polling)
    driver_cpu_ms: float = 0.0  # per event
    machine_busy: float = 0.0  # share of all CPUs busy during the feed (everyone's work)
    load_end: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_max: float = 0.0


@dataclass
class Sent:
    i: int
    key: str
    due: float
    start: float
    end: float
    seq: int = 0


# -- machine figures -----------------------------------------------------------------------------------------


def group_cpu(pgid: int) -> float:
    """CPU seconds (user + system) of the processes of group ``pgid`` that are alive now."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            fields = stat[stat.rindex(b")") + 2 :].split()
            if int(fields[2]) == pgid:
                total += int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            continue
    return total / tick


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    return sum(parts) - idle, sum(parts)


def slope(points: Sequence[tuple[float, float]]) -> float:
    if len(points) < 2:
        return 0.0
    mx = statistics.fmean(p[0] for p in points)
    my = statistics.fmean(p[1] for p in points)
    den = sum((p[0] - mx) ** 2 for p in points)
    return sum((p[0] - mx) * (p[1] - my) for p in points) / den if den else 0.0


class Sampler:
    """Every ``interval`` s: the backlog (``backlog()``) and the 1-minute load average, in a thread."""

    def __init__(self, backlog: Callable[[], int], interval: float = 1.0) -> None:
        self.backlog = backlog
        self.interval = interval
        self.points: list[tuple[float, float]] = []
        self.load_max = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.points.append((time.monotonic() - self._t0, float(self.backlog())))
            self.load_max = max(self.load_max, os.getloadavg()[0])


# -- the paced feed ------------------------------------------------------------------------------------------


def feed(threads: int, rate: float, seconds: float, send: Callable[[int], int], *, part: int = 0, parts: int = 1,
         t0: float | None = None) -> list[Sent]:
    """Call ``send(i)`` once per event from ``threads`` threads: event ``i`` is due at ``t0 + i / rate``
    (``rate`` 0: as fast as they go, for ``seconds``). With ``parts`` feeding processes, this one sends the
    events ``i % parts == part``. ``send`` returns the event's seq (0 for raw tasks)."""
    total = int(rate * seconds) if rate else sys.maxsize
    lock = threading.Lock()
    counter = iter(range(part, total, parts))
    out: list[Sent] = []
    errors: list[BaseException] = []
    t0 = time.time() + 0.05 if t0 is None else t0
    stop_at = t0 + seconds

    def loop() -> None:
        mine: list[Sent] = []
        try:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    break
                due = t0 + i / rate if rate else max(t0, time.time())
                if not rate and due >= stop_at:
                    break
                wait = due - time.time()
                if wait > 0:
                    time.sleep(wait)
                start = time.time()
                seq = send(i)
                mine.append(Sent(i, "", due, start, time.time(), seq))
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)
        with lock:
            out.extend(mine)

    workers = [threading.Thread(target=loop, name=f"feed-{n}") for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise errors[0]
    return sorted(out, key=lambda s: s.i)


@dataclass(frozen=True)
class SendSpec:
    """What the feed sends, so that a feeding process can build its own client (``--processes``)."""

    kind: str  # "garrison": client.ingest(); "http": POST /events to `garrison serve`; "raw": one no-op task
    settings: Settings
    tenant: str = ""
    name: str = ""
    target: str | None = None
    keys: int = 0
    seed: int = 0
    picks: int = 0
    run: str = ""
    task_events: bool = True
    url: str = ""  # "http": the server's base URL, and the tenant's API key
    api_key: str = ""


class Sender:
    """``sender(i)`` sends event ``i`` of a :class:`SendSpec` (one ``ingest()``, or one ``send_task``)."""

    def __init__(self, spec: SendSpec, client: Garrison | None = None) -> None:
        self.spec = spec
        if spec.kind in ("garrison", "http"):
            from garrison.client import Garrison

            self.client = client or Garrison(spec.settings)
            rng = random.Random(spec.seed)
            self.picks = [rng.randrange(spec.keys) for _ in range(spec.picks)]
            if spec.kind == "http":
                import httpx

                # One pool shared by the feeding threads, as a web app's HTTP client would be.
                self.http = httpx.Client(base_url=spec.url, timeout=30.0,
                                         headers={"Authorization": f"Bearer {spec.api_key}"},
                                         limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))
        else:
            self.app = raw_celery(spec.settings, task_events=spec.task_events)

    def key(self, i: int) -> str:
        return f"k{self.picks[i]:07d}"

    def warm(self) -> None:
        """Open this thread's connections (database, broker) without sending anything."""
        if self.spec.kind == "http":
            self.http.get("/healthz")
            return
        if self.spec.kind == "garrison":
            with self.client.db.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            app = self.client.publisher.app  # type: ignore[attr-defined]
        else:
            app = self.app
        with app.producer_or_acquire():
            pass

    def __call__(self, i: int) -> int:
        spec = self.spec
        if spec.kind == "garrison":
            return self.client.ingest(spec.name, self.key(i), {"n": 1}, tenant=spec.tenant, target=spec.target).seq
        if spec.kind == "http":
            body: dict[str, Any] = {"name": spec.name, "key": self.key(i), "data": {"n": 1}}
            if spec.target:
                body["target"] = spec.target
            answer = self.http.post("/events", json=body)
            answer.raise_for_status()
            return int(answer.json()["seq"])
        with self.app.producer_or_acquire() as producer:
            self.app.send_task(RAW_TASK, args=[i, spec.run], producer=producer)
        return 0


def _feeder(spec: SendSpec, threads: int, rate: float, seconds: float, part: int, parts: int,
            pipe: Connection) -> None:
    """A feeding process (``--processes``): builds its sender, warms one connection per thread, says
    ready, feeds its share from the ``t0`` it is sent, and sends back what it sent and its CPU time."""
    sender = Sender(spec)
    warmers = [threading.Thread(target=sender.warm) for _ in range(threads)]
    for w in warmers:
        w.start()
    for w in warmers:
        w.join()
    pipe.send("ready")
    t0 = pipe.recv()
    cpu0 = os.times()
    sent = feed(threads, rate, seconds, sender, part=part, parts=parts, t0=t0)
    cpu1 = os.times()
    pipe.send(([(s.i, s.due, s.start, s.end, s.seq) for s in sent],
               (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)))


def feed_processes(args: argparse.Namespace, spec: SendSpec, rate: float, local: Sender) -> tuple[list[Sent], float]:
    """Feed from this process (``--processes 1``) or from that many processes; returns what was sent and
    the CPU seconds the feeding took."""
    if args.processes <= 1:
        cpu0 = os.times()
        own = feed(args.threads, rate, args.seconds, local)
        cpu1 = os.times()
        return own, (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    ctx = mp.get_context("spawn")
    pipes, procs = [], []
    for part in range(args.processes):
        mine, theirs = ctx.Pipe()
        proc = ctx.Process(target=_feeder, args=(spec, args.threads, rate, args.seconds, part, args.processes,
                                                 theirs), daemon=True)
        proc.start()
        pipes.append(mine)
        procs.append(proc)
    try:
        for pipe in pipes:
            if not pipe.poll(120) or pipe.recv() != "ready":
                raise RuntimeError("a feeding process did not start")
        t0 = time.time() + 0.1
        for pipe in pipes:
            pipe.send(t0)
        sent: list[Sent] = []
        cpu = 0.0
        for pipe in pipes:
            rows, used = pipe.recv()
            sent += [Sent(i, "", due, start, end, seq) for i, due, start, end, seq in rows]
            cpu += used
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
    return sorted(sent, key=lambda s: s.i), cpu


# -- the commit listener --------------------------------------------------------------------------------------


def _listen(dsn: str, channel: str, pipe: Connection) -> None:
    """A separate process: LISTEN, stamp each notification on arrival; ``dump`` hands them over."""
    import psycopg

    got: list[tuple[str, float]] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'LISTEN "{channel}"')
        pipe.send("ready")
        while True:
            for n in conn.notifies(timeout=0.02):
                got.append((n.payload, time.time()))
            if pipe.poll():
                if pipe.recv() != "dump":
                    return
                # Notifications already at the socket are taken first.
                for n in conn.notifies(timeout=0.2):
                    got.append((n.payload, time.time()))
                pipe.send(got)
                got = []


class Listener:
    """Commits of cursor advances, as ``(tenant, key) -> [(seq, at)]`` (``at`` in time.time() seconds)."""

    def __init__(self, dsn: str, channel: str) -> None:
        ctx = mp.get_context("spawn")
        self._pipe, child = ctx.Pipe()
        self._proc = ctx.Process(target=_listen, args=(dsn, channel, child), daemon=True)
        self._proc.start()
        if not self._pipe.poll(60) or self._pipe.recv() != "ready":
            raise RuntimeError("the LISTEN process did not start")

    def dump(self) -> dict[tuple[str, str], list[tuple[int, float]]]:
        self._pipe.send("dump")
        by_key: dict[tuple[str, str], list[tuple[int, float]]] = {}
        for payload, at in self._pipe.recv():
            tenant, key, seq = payload.split(" ")
            by_key.setdefault((tenant, key), []).append((int(seq), at))
        for commits in by_key.values():
            commits.sort(key=lambda c: c[1])
        return by_key

    def close(self) -> None:
        if self._proc.is_alive():
            self._pipe.send("stop")
            self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()


def install_trigger(client: Garrison, channel: str) -> None:
    """``pg_notify(channel, 'tenant key seq')`` from each cursor advance, delivered at commit."""
    with client.db.engine.begin() as conn:
        conn.execute(text(f"""
            CREATE OR REPLACE FUNCTION bench_latency_notify() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM pg_notify('{channel}', NEW.tenant || ' ' || NEW.key || ' ' || NEW.processed_seq);
                RETURN NULL;
            END $$"""))
        conn.execute(text("DROP TRIGGER IF EXISTS bench_latency_applied ON garrison_cursors"))
        conn.execute(text("""
            CREATE TRIGGER bench_latency_applied AFTER UPDATE ON garrison_cursors FOR EACH ROW
            WHEN (NEW.processed_seq > OLD.processed_seq) EXECUTE FUNCTION bench_latency_notify()"""))


def first_commit(commits: list[tuple[int, float]], seq: int) -> float | None:
    """When the cursor first passed ``seq`` (commits are in arrival order, their seqs increase)."""
    seqs = [c[0] for c in commits]
    at = bisect.bisect_left(seqs, seq)
    return commits[at][1] if at < len(commits) else None


# -- garrison side --------------------------------------------------------------------------------------------


def pg_url(base: str, schema: str) -> str:
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}"


def scalar(client: Garrison, sql: str, **params: Any) -> int:
    with client.db.engine.connect() as conn:
        return int(conn.execute(text(sql), params).scalar() or 0)


def pending_events(client: Garrison, tenant: str) -> int:
    return scalar(
        client,
        "SELECT coalesce((SELECT sum(last_seq) FROM garrison_streams WHERE tenant = :t), 0)"
        " - coalesce((SELECT sum(processed_seq) FROM garrison_cursors WHERE tenant = :t), 0)",
        t=tenant,
    )


def prefill(client: Garrison, args: argparse.Namespace, tenant: str, keys: Sequence[str],
            proc: subprocess.Popen[bytes]) -> None:
    """One event per key (the reducer's first state; the journey's run, left waiting), applied, analyzed."""
    from benchmarks.procs import wait_for

    name, target = ("lat/start", None) if args.journey else ("add", "tally")
    for start in range(0, len(keys), 5000):
        client.ingest_many([{"name": name, "key": k, "data": {"n": 0}, "target": target, "tenant": tenant}
                            for k in keys[start : start + 5000]])
    wait_for(lambda: pending_events(client, tenant) == 0, args.timeout, "the prefill", proc, poll=0.2)
    if args.journey:
        waiting = "SELECT count(*) FROM garrison_runs WHERE tenant = :t AND status = 'waiting'"
        wait_for(lambda: scalar(client, waiting, t=tenant) == len(keys), args.timeout, "the runs", proc, poll=0.2)
    if not args.no_analyze:
        with client.db.engine.begin() as conn:
            for table in ("garrison_streams", "garrison_cursors", "garrison_events", "garrison_entities",
                          "garrison_state_versions", "garrison_runs", "garrison_timers", "garrison_effects"):
                conn.execute(text(f"ANALYZE {table}"))


def run_tenant(args: argparse.Namespace, n: int, rate: float, http: bool) -> str:
    """A tenant per run: fresh keys, nothing left over."""
    return f"{'h' if http else ''}{'j' if args.journey else 'r'}{n}-{rate:g}"


def run_garrison(args: argparse.Namespace, client: Garrison, listener: Listener | None, rate: float,
                 proc: subprocess.Popen[bytes], n: int = 0, server: tuple[str, dict[str, str]] | None = None
                 ) -> RunReport:
    tenant = run_tenant(args, n, rate, server is not None)
    keys = [f"k{n:07d}" for n in range(args.keys)]
    prefill(client, args, tenant, keys, proc)
    if listener is not None:
        listener.dump()  # drop the prefill's commits
    name, target = ("lat/ping", None) if args.journey else ("add", "tally")
    spec = SendSpec(kind="http" if server else "garrison", settings=client.settings, tenant=tenant, name=name,
                    target=target, keys=args.keys, seed=args.seed,
                    picks=int(rate * args.seconds) if rate else 2_000_000,
                    url=server[0] if server else "", api_key=server[1][tenant] if server else "")
    sender = Sender(spec, client)
    side = "garrison journey" if args.journey else "garrison reducer"
    report = RunReport(side=side + (" via HTTP" if server else ""), rate=rate,
                       seconds=args.seconds, keys=args.keys, threads=args.threads * args.processes, sent=0,
                       achieved_rate=0.0)
    sent = _timed_feed(args, spec, rate, sender, lambda: pending_events(client, tenant), proc, report)
    for s in sent:
        s.key = sender.key(s.i)
    t_end = max(s.end for s in sent)
    from benchmarks.procs import wait_for

    wait_for(lambda: pending_events(client, tenant) == 0, args.timeout, "the backlog to drain", proc, poll=0.02)
    report.drain_s = time.time() - t_end

    check(client, args, tenant, len(sent))
    with client.db.engine.connect() as conn:
        picked = {(k, int(q)): float(at) for k, q, at in conn.execute(text(
            "SELECT key, seq, extract(epoch FROM created_at) FROM garrison_state_versions"
            " WHERE tenant = :t AND seq IS NOT NULL"), {"t": tenant})}
    ingest = [s.end - s.start for s in sent]
    pickup = [picked[(s.key, s.seq)] - s.end for s in sent if (s.key, s.seq) in picked]
    first = "POST /events" if server else "ingest()"
    report.latencies = {first: Dist.of(ingest), f"{first} return -> picked up": Dist.of(pickup)}
    last_applied = max(picked.get((s.key, s.seq), t_end) for s in sent)
    if listener is not None:
        commits = listener.dump()
        applied: list[float] = []
        for s in sent:
            at = first_commit(commits.get((tenant, s.key), []), s.seq)
            if at is None:
                report.not_applied += 1
            else:
                applied.append(at - s.end)
                last_applied = max(last_applied, at)
        report.latencies["ingest() return -> applied (commit)"] = Dist.of(applied)
    report.applied_rate = len(sent) / (last_applied - min(s.start for s in sent))
    return report


def check(client: Garrison, args: argparse.Namespace, tenant: str, sent: int) -> None:
    """Every event applied once: the reducer's counts add up to the events sent; no failure."""
    failures = scalar(client, "SELECT count(*) FROM garrison_failures WHERE tenant = :t", t=tenant)
    if args.journey:
        total = sent
    else:
        total = scalar(client, "SELECT coalesce(sum((state->>'count')::int), 0) FROM garrison_entities"
                               " WHERE tenant = :t AND automation = 'tally'", t=tenant)
    if failures or total != sent:
        raise AssertionError(f"{tenant}: {failures} failures; the counts add up to {total}, {sent} events were sent")


def _timed_feed(args: argparse.Namespace, spec: SendSpec, rate: float, sender: Sender, backlog: Callable[[], int],
                proc: subprocess.Popen[bytes], report: RunReport) -> list[Sent]:
    idle0 = group_cpu(proc.pid)
    time.sleep(2.0)
    report.worker_idle_cpu = (group_cpu(proc.pid) - idle0) / 2.0
    for hook in FEED_HOOKS:
        hook("start", report, proc.pid)
    busy0, total0 = machine_ticks()
    cpu0 = group_cpu(proc.pid)
    with Sampler(backlog) as sampler:
        sent, driver_cpu = feed_processes(args, spec, rate, sender)
        report.backlog_end = backlog()
    for hook in FEED_HOOKS:
        hook("end", report, proc.pid)
    cpu1 = group_cpu(proc.pid)
    busy1, total1 = machine_ticks()
    report.load_end = os.getloadavg()
    report.load_max = max(sampler.load_max, report.load_end[0])
    report.sent = len(sent)
    span = max(s.end for s in sent) - min(s.start for s in sent)
    report.achieved_rate = len(sent) / span if span > 0 else 0.0
    report.backlog_max = int(max([p[1] for p in sampler.points] + [report.backlog_end]))
    report.backlog_slope = slope(sampler.points)
    report.worker_cpu_ms = (cpu1 - cpu0) / len(sent) * 1000
    report.driver_cpu_ms = driver_cpu / len(sent) * 1000
    report.machine_busy = (busy1 - busy0) / max(1, total1 - total0)
    if proc.poll() is not None:
        raise RuntimeError(f"the worker exited ({proc.returncode}) during the feed; see its log")
    return sent


def garrison_side(args: argparse.Namespace, settings: Settings, log_dir: Path) -> list[RunReport]:
    from benchmarks.procs import wait_for, worker
    from garrison.client import Garrison

    client = Garrison(settings)
    listener = None
    if not args.no_notify:
        channel = f"{args.pg_schema}_applied"
        install_trigger(client, channel)
        listener = Listener(args.pg_url, channel)
    env = {"BENCH_LATENCY_JOURNEY_TIMEOUT": args.journey_timeout or "", **dict(e.split("=", 1) for e in args.env)}
    app = args.app
    log = log_dir / "garrison-worker.log"
    reports = []
    try:
        with worker(app, settings, log, concurrency=args.concurrency, beat=True,
                    **env) as proc:
            # Warm-up: every pool process imports and connects; every client thread gets its connections.
            warm = [f"w{n}" for n in range(4 * args.threads)]
            feed(args.threads, 0, 0.5, lambda i: client.ingest("add", warm[i % len(warm)], {"n": 1},
                                                              tenant=WARMUP_TENANT, target="tally").seq)
            wait_for(lambda: pending_events(client, WARMUP_TENANT) == 0, 120, "the garrison warm-up", proc)
            for n, rate in enumerate(args.rates):
                r = run_garrison(args, client, listener, rate, proc, n)
                reports.append(r)
                show(r)
            if args.http:
                with http_server(args, settings, log_dir) as server:
                    for n, rate in enumerate(args.http_rates):
                        r = run_garrison(args, client, listener, rate, proc, n, server)
                        reports.append(r)
                        show(r)
    except BaseException:
        print(log.read_text(errors="replace")[-4000:], file=sys.stderr)
        raise
    finally:
        if listener is not None:
            listener.close()
        client.db.dispose()
    return reports


@contextmanager
def http_server(args: argparse.Namespace, settings: Settings, log_dir: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """``garrison serve`` (one uvicorn process, as the CLI starts it) with an API key per HTTP run's tenant:
    the same path as ``ingest()``, behind HTTP. Yields its URL and the keys by tenant."""
    import secrets
    import socket

    import httpx

    from benchmarks.throughput import child_env

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    keys = {run_tenant(args, n, rate, True): secrets.token_hex(16) for n, rate in enumerate(args.http_rates)}
    env = child_env(settings, GARRISON_API_KEYS=",".join(f"{t}:{k}" for t, k in keys.items()))
    log = (log_dir / "garrison-serve.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "garrison.cli", "serve", "--port", str(port), "--log-level",
                             "warning"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"garrison serve did not start; see {log.name}")
            time.sleep(0.1)
        yield url, keys
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)


# -- raw Celery side ------------------------------------------------------------------------------------------


def raw_side(args: argparse.Namespace, settings: Settings, log_dir: Path, task_events: bool) -> list[RunReport]:
    import redis

    from benchmarks.procs import wait_for, worker

    r = redis.Redis.from_url(args.redis_url)
    env = {"BENCH_COUNTER": args.redis_url, "BENCH_TASK_EVENTS": "1" if task_events else "0"}
    log = log_dir / f"raw-worker-{int(task_events)}.log"
    side = "raw Celery" + ("" if task_events else " (task events off)")
    reports = []

    def backlog() -> int:
        # published, not started: in the queue, or taken by the worker and not yet acknowledged
        return int(r.llen(RAW_QUEUE)) + int(r.hlen("unacked"))

    try:
        with worker("benchmarks.latency:raw_app", settings, log, queue=RAW_QUEUE, concurrency=args.concurrency,
                    **env) as proc:
            warm_sender = Sender(SendSpec(kind="raw", settings=settings, run="warm", task_events=task_events))
            warm = len(feed(args.threads, 0, 0.5, warm_sender))
            wait_for(lambda: r.llen(RAW_LIST + "warm") >= warm, 120, "the raw warm-up", proc)
            for n, rate in enumerate(args.rates):
                run = f"{int(task_events)}-{n}-{rate:g}"
                report = RunReport(side=side, rate=rate, seconds=args.seconds, keys=0,
                                   threads=args.threads * args.processes, sent=0, achieved_rate=0.0)
                spec = SendSpec(kind="raw", settings=settings, run=run, task_events=task_events)
                sent = _timed_feed(args, spec, rate, Sender(spec), backlog, proc, report)
                t_end = max(s.end for s in sent)
                n_sent = len(sent)

                def drained(run: str = run, n_sent: int = n_sent) -> bool:
                    return int(r.llen(RAW_LIST + run)) >= n_sent

                wait_for(drained, args.timeout, "raw Celery to drain", proc, poll=0.005)
                report.drain_s = time.time() - t_end
                started = {int(i): float(at) for i, at in (v.split() for v in r.lrange(RAW_LIST + run, 0, -1))}
                report.latencies = {
                    "publish (send_task)": Dist.of([s.end - s.start for s in sent]),
                    "publish return -> task start": Dist.of([started[s.i] - s.end for s in sent]),
                }
                report.applied_rate = len(sent) / (max(started.values()) - min(s.start for s in sent))
                reports.append(report)
                show(report)
    except BaseException:
        print(log.read_text(errors="replace")[-4000:], file=sys.stderr)
        raise
    return reports


# -- driver ---------------------------------------------------------------------------------------------------


def show(r: RunReport) -> None:
    offered = f"{r.rate:g} events/s offered" if r.rate else "unpaced"
    print(f"\n  {r.side}: {offered}, achieved {r.achieved_rate:.1f}/s ({r.sent} events, {r.threads} threads"
          + (f", {r.keys} keys" if r.keys else "") + ")", flush=True)
    print(f"    {'ms':<34}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}{'mean':>9}")
    for label, d in r.latencies.items():
        if d is not None:
            print(d.row(label))
    print(f"    backlog at the feed's end {r.backlog_end} (max {r.backlog_max}, growth {r.backlog_slope:+.1f}/s), "
          f"drained {r.drain_s:.2f} s later; applied {r.applied_rate:.1f}/s"
          + (f"; NOT APPLIED {r.not_applied}" if r.not_applied else ""))
    print(f"    CPU per event: worker {r.worker_cpu_ms:.2f} ms (idle: {100 * r.worker_idle_cpu:.0f} % of a CPU), "
          f"driver {r.driver_cpu_ms:.2f} ms; machine busy {100 * r.machine_busy:.0f} %; load average "
          f"{r.load_end[0]:.2f} {r.load_end[1]:.2f} {r.load_end[2]:.2f} (1-min max {r.load_max:.2f})", flush=True)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=[50.0, 300.0, 1000.0],
                   help="offered events/s, comma separated (0: as fast as the threads go); default 50,300,1000")
    p.add_argument("--rate", type=float, dest="rates_one", help="one rate (instead of --rates)")
    p.add_argument("--seconds", type=float, default=30.0, help="feed duration per rate")
    p.add_argument("--keys", type=int, default=1000)
    p.add_argument("--threads", type=int, default=8, help="client threads, each sending one event at a time")
    p.add_argument("--processes", type=int, default=1,
                   help="client processes with --threads threads each (one Python process tops out at a few "
                        "hundred ingest() calls/s)")
    p.add_argument("--journey", action="store_true", help=f"every event wakes a journey in wait_for ({JOURNEY})")
    p.add_argument("--http", action="store_true",
                   help="then the same feed through `garrison serve` (POST /events), at --http-rates")
    p.add_argument("--http-rates", default="50", type=lambda v: [float(x) for x in v.split(",")],
                   help="events/s for the HTTP runs (default 50)")
    p.add_argument("--journey-timeout", default="", help="a timeout for each wait, e.g. 1h (a timer per event)")
    p.add_argument("--raw", choices=("events", "no-events", "both", "none"), default="events",
                   help="the raw Celery baseline: task events on (as garrison), off, both, none")
    p.add_argument("--skip-garrison", action="store_true")
    p.add_argument("--no-notify", action="store_true", help="no cursor trigger: report 'picked up' only")
    p.add_argument("--no-analyze", action="store_true", help="do not ANALYZE after the prefill")
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--app", default="garrison.tasks",
                   help="the worker's Celery app (e.g. benchmarks.patched_worker:app)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="more environment for the worker")
    p.add_argument("--seed", type=int, default=12)
    p.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", PG_URL))
    p.add_argument("--pg-schema", default=PG_SCHEMA)
    p.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", REDIS_URL))
    p.add_argument("--timeout", type=float, default=600.0, help="for the prefill and for a backlog to drain")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    if args.rates_one is not None:
        args.rates = [args.rates_one]
    return args


def main(argv: list[str] | None = None) -> list[RunReport]:
    from benchmarks.throughput import fresh

    args = parse(argv)
    rates = ", ".join(f"{r:g}/s" if r else "unpaced" for r in args.rates)
    what = f"journey {JOURNEY} (wait_for)" if args.journey else "reducer tally"
    print(f"latency: single events from {args.threads} threads via client.ingest(), {what}, {args.keys} keys, "
          f"{rates}, {args.seconds:g} s each; PostgreSQL + Redis, 1 worker x prefork -c {args.concurrency}; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    reports: list[RunReport] = []
    with tempfile.TemporaryDirectory(prefix="garrison-bench-latency-") as tmp:
        settings = Settings(
            database_url=pg_url(args.pg_url, args.pg_schema), broker_url=args.redis_url, data_dir=Path(tmp),
            automations=("benchmarks.apps", "benchmarks.latency"), tenant="bench", log_level="WARNING",
        )
        fresh(settings, args)
        if not args.skip_garrison:
            reports += garrison_side(args, settings, Path(tmp))
        raws = {"both": [True, False], "events": [True], "no-events": [False], "none": []}[args.raw]
        for task_events in raws:
            reports += raw_side(args, settings, Path(tmp), task_events)
    summary(reports)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in reports], indent=2))
    return reports


def summary(reports: Sequence[RunReport]) -> None:
    print("\nsummary (ms; applied = ingest() return -> cursor committed; raw = publish return -> task start):")
    print(f"  {'side':<30}{'rate':>8}{'achieved':>10}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}{'backlog':>9}"
          f"{'load':>7}")
    for r in reports:
        d = (r.latencies.get("ingest() return -> applied (commit)")
             or r.latencies.get("ingest() return -> picked up")
             or r.latencies.get("publish return -> task start"))
        if d is None:
            continue
        rate = f"{r.rate:g}" if r.rate else "max"
        print(f"  {r.side:<30}{rate:>8}{r.achieved_rate:>10.1f}{d.p50:>9.1f}{d.p95:>9.1f}{d.p99:>9.1f}"
              f"{d.max:>9.1f}{r.backlog_end:>9}{r.load_end[0]:>7.2f}")


if __name__ == "__main__":
    main()
