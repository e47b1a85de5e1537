"""Worker processes and their memory, for timers.py and journeys.py.

A worker is started exactly as a user starts one (``celery -A APP worker --pool prefork -c 2``, with
``--beat`` when asked), in its own session, so its process group holds the main process, its pool
processes and the embedded beat: :class:`RssSampler` sums their memory from ``/proc`` (no psutil).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.throughput import ROOT, child_env
from garrison.config import Settings

POLL = 0.05


@contextmanager
def worker(
    app: str,
    settings: Settings,
    log: Path,
    *,
    queue: str | None = None,
    concurrency: int = 2,
    pool: str = "prefork",
    beat: bool = False,
    **env: str,
) -> Iterator[subprocess.Popen[bytes]]:
    """One ``celery worker`` of ``app`` (on ``queue``; by default the queues its app declares: garrison's own
    and one per automation); the whole process group is stopped on exit."""
    name = app.split(":")[-1].replace(".", "-")
    cmd = [
        sys.executable, "-m", "celery", "-A", app, "worker", "--loglevel", "WARNING",
        "--pool", pool, "--concurrency", str(concurrency), *(["-Q", queue] if queue else []),
        "--hostname", f"{name}@%h", "--without-mingle", "--without-gossip", "--without-heartbeat",
    ]
    if beat:
        cmd += ["--beat", "--schedule", str(log.with_suffix(".beat"))]
    handle = log.open("wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(settings, **env), stdout=handle,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        handle.close()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[bytes],
             poll: float = POLL) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited ({proc.returncode}) while waiting for {what}; see its log")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)


# -- memory ------------------------------------------------------------------------------------------


def group_memory(pgid: int) -> tuple[int, int, int]:
    """(RSS sum, PSS sum, process count) in bytes over the processes of process group ``pgid``.
    The RSS sum counts pages the pool processes share with the main process (fork) once per process;
    the PSS sum divides them, so it is what the group really holds."""
    rss = pss = count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            fields = stat[stat.rindex(b")") + 2 :].split()
            if int(fields[2]) != pgid:
                continue
            with open(f"/proc/{entry}/smaps_rollup", "rb") as f:
                for line in f:
                    if line.startswith(b"Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith(b"Pss:"):
                        pss += int(line.split()[1]) * 1024
            count += 1
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we read it
    return rss, pss, count


def group_detail(pgid: int) -> list[tuple[int, str, int]]:
    """(pid, command line, RSS bytes) of each process of group ``pgid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            if int(stat[stat.rindex(b")") + 2 :].split()[2]) != pgid:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            with open(f"/proc/{entry}/status", "rb") as f:
                rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith(b"VmRSS:"))
            found.append((int(entry), cmd[:60], rss))
        except (OSError, ValueError, IndexError, StopIteration):
            continue
    return sorted(found)


@dataclass
class Sample:
    at: float
    phase: str
    rss: int
    pss: int
    procs: int


@dataclass
class RssSampler:
    """Samples a worker's process group every ``interval`` seconds in a thread, tagged with the phase."""

    pgid: int
    interval: float = 0.5
    phase: str = "start"
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set():
            rss, pss, count = group_memory(self.pgid)
            if count:
                self.samples.append(Sample(time.monotonic() - t0, self.phase, rss, pss, count))
            self._stop.wait(self.interval)

    def peak(self, phase: str | None = None) -> Sample | None:
        chosen = [s for s in self.samples if phase is None or s.phase == phase]
        return max(chosen, key=lambda s: s.rss) if chosen else None

    def last(self, phase: str | None = None) -> Sample | None:
        chosen = [s for s in self.samples if phase is None or s.phase == phase]
        return chosen[-1] if chosen else None


def mb(n: int) -> float:
    return n / 1e6
