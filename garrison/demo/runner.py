"""Runs the demo: a fresh embedded setup, a real worker process, two inquiries, a pulse every second.

Ryan and Alice inquire. Alice responds after 1.5 s; Ryan never does, so a ``checkTimeout`` pulse past
``timeoutAfter`` moves him to ``timeout`` and the ``emailSupport`` listener emails support, once.
Everything printed is read back from what garrison stored: sends, the state versions the worker
committed, and the mailbox the listener wrote.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from garrison.automations.machine import Machine
from garrison.cli import render
from garrison.client import Garrison
from garrison.clock import as_utc
from garrison.config import Settings
from garrison.demo.support import read_mailbox, support
from garrison.inspect import inspect_key
from garrison.models import VERSIONS

MARKER = ".garrison-demo"
PEOPLE = {"ryan": "Ryan", "alice": "Alice"}
RESPONDS = {"alice": 1.5}
READY_TIMEOUT = 30.0
RUN_TIMEOUT = 15.0
PULSES_AFTER_EMAIL = 2

Out = Callable[[str], Any]


def demo_settings(directory: Path) -> Settings:
    """The embedded default under ``directory``, whatever GARRISON_DATABASE_URL or _BROKER_URL say."""
    return Settings.from_env(
        data_dir=directory,
        database_url=f"sqlite:///{directory / 'garrison.db'}",
        broker_url="filesystem://",
        automations=("garrison.demo.support",),
    )


def fresh_directory(directory: Path) -> Path:
    """Empty ``directory`` for a new run; refuse to empty one the demo did not make."""
    directory = directory.resolve()
    if directory.exists() and any(directory.iterdir()):
        if not (directory / MARKER).exists():
            raise SystemExit(f"error: {directory} is not empty and was not made by `garrison demo`; pick --dir")
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MARKER).write_text("made by `garrison demo`; deleted by its next run\n")
    return directory


@dataclass
class Log:
    """Timestamped lines, relative to the first send."""

    out: Out
    start: float = field(default_factory=time.time)

    def __call__(self, what: str, text: str, at: float | None = None) -> None:
        at = time.time() if at is None else at
        clock = time.strftime("%H:%M:%S", time.localtime(at))
        self.out(f"{clock} {at - self.start:+6.2f}s  {what:<6} {text}")


class Worker:
    """``python -m celery -A garrison.tasks worker --pool solo``, in its own process group."""

    def __init__(self, settings: Settings) -> None:
        self.log_path = settings.data_dir / "worker.log"
        env = {**os.environ, **settings.as_env()}
        args = [
            sys.executable, "-m", "celery", "-A", "garrison.tasks", "worker", "--pool", "solo",
            "--loglevel", "INFO", "--hostname", "demo@%h", "--without-mingle", "--without-gossip",
        ]
        with self.log_path.open("wb") as handle:
            self.proc = subprocess.Popen(
                args, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
            )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if " ready." in self.output():
                return True
            time.sleep(0.1)
        return False

    def stop(self) -> int | None:
        """Warm shutdown (SIGTERM lets the current task finish); SIGKILL if it hangs."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode


class Watcher:
    """Prints each new state version and email as it appears."""

    def __init__(self, client: Garrison, log: Log) -> None:
        self.client = client
        self.log = log
        self.seen: set[tuple[str, int]] = set()
        self.states: dict[str, Any] = {}
        self.emails: list[dict[str, Any]] = []

    def poll(self) -> None:
        tenant = self.client.settings.tenant
        with self.client.db.session() as s:
            rows = s.execute(
                select(VERSIONS.c.key, VERSIONS.c.version, VERSIONS.c.message, VERSIONS.c.state, VERSIONS.c.created_at)
                .where(VERSIONS.c.tenant == tenant, VERSIONS.c.automation == support.name)
                .order_by(VERSIONS.c.created_at, VERSIONS.c.key, VERSIONS.c.version)
            ).all()
        for row in rows:
            if (row.key, row.version) in self.seen:
                continue
            self.seen.add((row.key, row.version))
            before = (self.states.get(row.key) or {}).get("status", "(new)")
            self.states[row.key] = row.state
            self.log(
                "state", f"{row.key:<6} v{row.version}  {before} -> {row.state['status']}  ({row.message})",
                at=as_utc(row.created_at).timestamp(),
            )
        mailbox = read_mailbox(self.client.settings)
        for email in mailbox[len(self.emails):]:
            self.log("email", f"to {email['to']}: {email['message']!r}", at=float(email["at"]))
        self.emails = mailbox

    def status(self, key: str) -> str | None:
        state = self.states.get(key)
        return None if state is None else str(state["status"])


def send(machine: Machine, client: Garrison, log: Log, reducer: str, key: str, data: dict[str, Any]) -> None:
    machine.send(reducer, key, data, client=client)
    log("send", f"{reducer}({key}, {render.cell(data)})")


def pulse(client: Garrison, log: Log, slot: int, now: float) -> None:
    """One ``checkTimeout`` to every person, each at most once per slot (idempotency key)."""
    client.ingest_many([
        {"name": "checkTimeout", "key": key, "target": support.name, "data": {"now": now},
         "idempotency_key": f"pulse:checkTimeout:{slot}:{key}"}
        for key in PEOPLE
    ])
    log("pulse", f"checkTimeout(now=+{now - log.start:.0f}s) -> {', '.join(PEOPLE)}")


def _pending(client: Garrison) -> list[str]:
    return client.engine.pending(client.settings.tenant, list(PEOPLE))


def run(directory: Path, *, out: Out = print) -> int:
    """The whole demo. Returns the exit code: 0 when Ryan got exactly one email and Alice none."""
    # kombu warns that ``filesystem://`` names no host; that transport needs none.
    logging.getLogger("kombu.connection").setLevel(logging.ERROR)
    directory = fresh_directory(directory)
    settings = demo_settings(directory)
    client = Garrison(settings)
    out(f"garrison demo in {directory}: SQLite + kombu's filesystem broker, no server")
    out(f"support prefs {support.preferences}; reducers {sorted(support.reducers)}; "
        f"listeners {sorted(support.listeners)}")
    client.init_db()
    out("$ garrison db init              -> tables created")
    worker = Worker(settings)
    out("$ celery -A garrison.tasks worker --pool solo   (GARRISON_AUTOMATIONS=garrison.demo.support)")
    try:
        if not worker.wait_ready(READY_TIMEOUT):
            out("the worker did not start:\n" + worker.output()[-3000:])
            return 1
        out("worker ready\n")
        out("Ryan and Alice inquire. Alice responds at +1.5s, Ryan never does. Every second a checkTimeout")
        out("pulse goes to both (casern's setInterval); past timeoutAfter, emailSupport mails support.\n")
        return _story(client, Log(out), worker)
    finally:
        code = worker.stop()
        out(f"worker stopped (exit code {code})")
        client.db.dispose()


def _story(client: Garrison, log: Log, worker: Worker) -> int:
    out = log.out
    watcher = Watcher(client, log)
    for key, name in PEOPLE.items():
        send(support, client, log, "initialInquiry", key, {"name": name, "when": round(log.start, 2)})
    slot = 0
    responded: set[str] = set()
    emailed_at: int | None = None
    while True:
        watcher.poll()
        elapsed = time.time() - log.start
        for key, after in RESPONDS.items():
            if elapsed >= after and key not in responded:
                responded.add(key)
                send(support, client, log, "respond", key, {"when": round(time.time(), 2)})
        if elapsed >= slot + 1:
            slot += 1
            pulse(client, log, slot, round(log.start + slot, 2))
        if emailed_at is None and watcher.emails:
            emailed_at = slot
        if emailed_at is not None and slot >= emailed_at + PULSES_AFTER_EMAIL and not _pending(client):
            break
        if elapsed > RUN_TIMEOUT or worker.proc.poll() is not None:
            out("the demo did not finish in time; worker log:\n" + worker.output()[-3000:])
            return 1
        time.sleep(0.1)

    out("\n$ garrison inspect ryan")
    out(render.key_report(inspect_key(client, "ryan", history=10, limit=10)))
    to_ryan = [e for e in watcher.emails if "Ryan" in e["message"]]
    to_alice = [e for e in watcher.emails if "Alice" in e["message"]]
    out(f"\nresult: ryan {watcher.status('ryan')}, alice {watcher.status('alice')}; "
        f"emails about Ryan: {len(to_ryan)}, about Alice: {len(to_alice)}")
    directory = client.settings.data_dir
    out(f"mailbox: {directory / 'mailbox.jsonl'}  worker log: {directory / 'worker.log'}")
    out(f"look further: GARRISON_DATA_DIR={directory} garrison inspect alice")
    ok = (len(to_ryan), len(to_alice)) == (1, 0) and watcher.status("ryan") == "timeout"
    return 0 if ok and watcher.status("alice") == "responded" else 1
