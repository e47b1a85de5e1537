"""Real processes for tests: workers (and beat) started exactly as a user starts them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from garrison.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
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
