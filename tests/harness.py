"""Real processes for tests: workers (and beat) started exactly as a user starts them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from garrison.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def worker_urls(pg_url: str, redis_url: str, worker: str | None) -> tuple[str, str]:
    """The database and Redis db of one xdist worker (``gw0``, ``gw1``...): the base database name with
    the worker's id appended, and the base Redis db counted down by the worker's number. Outside xdist,
    the base URLs themselves."""
    if not worker or not worker.startswith("gw"):
        return pg_url, redis_url
    index = int(worker[2:])
    pg = make_url(pg_url)
    pg = pg.set(database=f"{pg.database}_{worker}")
    base, _, db = redis_url.rpartition("/")
    number = int(db or 0) - index
    if number < 0:
        raise RuntimeError(f"xdist worker {worker} needs Redis db {number} below {redis_url}: run fewer workers "
                           "or point GARRISON_TEST_REDIS_URL at a higher db")
    return pg.render_as_string(hide_password=False), f"{base}/{number}"


def ensure_database(url: str) -> None:
    """Create the PostgreSQL database of ``url`` when it does not exist (through the ``postgres`` one)."""
    import psycopg

    target = make_url(url)
    admin = target.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target.database,)).fetchone() is None:
            # Another run's worker may make it meanwhile: that is as good.
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                conn.execute(f'CREATE DATABASE "{target.database}"')


def load_factor() -> float:
    """How much slower than an idle machine this one runs now: the 1-minute load average per core, at
    least 1. A shared CI machine running other suites meanwhile reads 3 to 6."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return 1.0
    return max(1.0, load / (os.cpu_count() or 1))


# A wait never lasts longer than this many times its timeout, however loaded the machine.
MAX_STRETCH = 8.0


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` seconds of an
    idle machine's time. The deadline scales with load: a second waited while the machine runs at twice
    its cores counts as half a second (up to :data:`MAX_STRETCH` times ``timeout`` of wall time), so a busy
    machine gets longer, never a fixed wall-clock window it cannot meet."""
    started = last = time.monotonic()
    budget = timeout
    while True:
        value = predicate()
        if value:
            return value
        now = time.monotonic()
        budget -= (now - last) / load_factor()
        last = now
        if budget <= 0 or now - started > timeout * MAX_STRETCH:
            raise AssertionError(
                f"timed out after {now - started:.1f}s ({timeout}s scaled by the machine's load) waiting for "
                f"{what or predicate}"
            )
        time.sleep(interval)


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GARRISON_")}
    env.update(settings.as_env())
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


class WorkerProcess:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc = proc
        self.log = log

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        """SIGKILL the whole process group: the main process and its pool children, no clean-up."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def start_worker(
    settings: Settings,
    log: Path,
    *,
    name: str,
    concurrency: int = 2,
    pool: str = "prefork",
    beat: bool = False,
    env: dict[str, str] | None = None,
    ready_timeout: float = 60.0,
) -> WorkerProcess:
    """Start ``celery -A garrison.tasks worker`` and wait until it says it is ready."""
    args = [
        sys.executable, "-m", "celery", "-A", "garrison.tasks", "worker",
        "--loglevel", "INFO", "--concurrency", str(concurrency), "--pool", pool,
        "--hostname", f"{name}@%h", "--without-mingle", "--without-gossip",
    ]
    if beat:
        args += ["--beat", "--schedule", str(log.with_suffix(".beat"))]
    handle = log.open("wb")
    proc = subprocess.Popen(
        args, cwd=ROOT, env=child_env(settings, **(env or {})), stdout=handle, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    worker = WorkerProcess(proc, log)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode}:\n{worker.output}")
        return " ready." in worker.output

    wait_until(ready, timeout=ready_timeout, what=f"worker {name} to be ready")
    return worker


def start_beat(settings: Settings, log: Path, *, env: dict[str, str] | None = None) -> WorkerProcess:
    """Start ``celery -A garrison.tasks beat`` (garrison's scheduler: the relay and the pulses)."""
    args = [sys.executable, "-m", "celery", "-A", "garrison.tasks", "beat", "--loglevel", "INFO"]
    handle = log.open("wb")
    proc = subprocess.Popen(
        args, cwd=ROOT, env=child_env(settings, **(env or {})), stdout=handle, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    beat = WorkerProcess(proc, log)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"beat exited with {proc.returncode}:\n{beat.output}")
        return "beat: Starting" in beat.output

    wait_until(ready, timeout=60, what="beat to start")
    return beat


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(settings: Settings, log: Path, *, command: str = "serve") -> tuple[WorkerProcess, str]:
    """Start ``garrison serve`` (or ``garrison console``) on a free port; returns it and its base URL once
    ``/healthz`` answers."""
    import httpx

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "garrison.cli", command, "--port", str(port)], cwd=ROOT, env=child_env(settings),
        stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    server = WorkerProcess(proc, log)
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"garrison {command} exited with {proc.returncode}:\n{server.output}")
        try:
            return httpx.get(f"{base}/healthz").status_code == 200
        except httpx.TransportError:
            return False

    wait_until(healthy, timeout=30, what=f"garrison {command} to answer /healthz")
    return server, base
