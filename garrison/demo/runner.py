"""Runs a demo: a fresh embedded setup (SQLite + kombu's filesystem broker), a real worker process, and a
printout of what happens, read back from what garrison stored.

``onboarding`` (the default): the events seed's journey (``garrison.demo.onboarding``) on a worker with
beat. The seed's timeline for ``user1`` is ingested in real time (about 21 s); every event as it appears
in ``garrison_events`` and every line the journey logs is printed with its time since the start. The
reminders come from durable timers fired by the worker; the demo only ingests the user's own events.

``support``: casern's support inquiry. Ryan and Alice inquire. Alice responds after 1.5 s; Ryan never
does, so a ``checkTimeout`` pulse past ``timeoutAfter`` moves him to ``timeout`` and the ``emailSupport``
listener emails support, once.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from garrison.automations.machine import Machine
from garrison.client import Garrison
from garrison.clock import as_utc
from garrison.config import Settings
from garrison.core.runs import RunInfo
from garrison.demo.onboarding import TIMELINE, onboarding
from garrison.demo.support import read_mailbox, support
from garrison.models import EVENTS, VERSIONS
from garrison.ops import render
from garrison.ops.inspect import inspect_key

MARKER = ".garrison-demo"
READY_TIMEOUT = 30.0
TAIL = 3000

# support
PEOPLE = {"ryan": "Ryan", "alice": "Alice"}
RESPONDS = {"alice": 1.5}
RUN_TIMEOUT = 15.0
PULSES_AFTER_EMAIL = 2

# onboarding
USER = "user1"
SYSTEM_PREFIX = "garrison/"
JOURNEY_EMIT = "garrison/journey:"  # the idempotency keys of the events journeys ingest (``ctx.ingest``)
ONBOARDING_GRACE = 15.0  # seconds after the timeline's last event before the demo gives up
HOLD_BACK = 0.3  # print a line once this old, so a line committed a moment late still comes in time order
ENDED = ("completed", "failed", "cancelled")

Out = Callable[[str], Any]

DEMOS: dict[str, str] = {
    "onboarding": "garrison.demo.onboarding",
    "support": "garrison.demo.support",
}


def demo_settings(directory: Path, automations: str = DEMOS["onboarding"]) -> Settings:
    """The embedded default under ``directory``, whatever GARRISON_DATABASE_URL or _BROKER_URL say."""
    return Settings.from_env(
        data_dir=directory,
        database_url=f"sqlite:///{directory / 'garrison.db'}",
        broker_url="filesystem://",
        automations=(automations,),
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


class Worker:
    """``python -m celery -A garrison.tasks worker --pool solo [--beat]``, in its own process group."""

    def __init__(self, settings: Settings, *, beat: bool = False) -> None:
        self.log_path = settings.data_dir / "worker.log"
        env = {**os.environ, **settings.as_env()}
        self.args = [
            sys.executable, "-m", "celery", "-A", "garrison.tasks", "worker", "--pool", "solo",
            "--loglevel", "INFO", "--hostname", "demo@%h", "--without-mingle", "--without-gossip",
        ]
        if beat:
            self.args += ["--beat", "--schedule", str(settings.data_dir / "beat-schedule")]
        self.shown = " ".join(["celery", *self.args[3:]])
        with self.log_path.open("wb") as handle:
            self.proc = subprocess.Popen(
                self.args, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
            )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self) -> str:
        return self.output()[-TAIL:]

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


def run(directory: Path, *, name: str = "onboarding", out: Out = print) -> int:
    """The whole demo ``name`` (``onboarding`` or ``support``). Returns the exit code: 0 when it did what
    it shows (the journey completed; support emailed once about Ryan and never about Alice)."""
    if name not in DEMOS:
        raise SystemExit(f"error: no demo named {name!r}; there are {sorted(DEMOS)}")
    # kombu warns that ``filesystem://`` names no host; that transport needs none.
    logging.getLogger("kombu.connection").setLevel(logging.ERROR)
    directory = fresh_directory(directory)
    settings = demo_settings(directory, DEMOS[name])
    client = Garrison(settings)
    out(f"garrison demo {name} in {directory}: SQLite + kombu's filesystem broker, no server")
    if name == "support":
        out(f"support prefs {support.preferences}; reducers {sorted(support.reducers)}; "
            f"listeners {sorted(support.listeners)}")
    client.init_db()
    out("$ garrison db init              -> tables created")
    worker = Worker(settings, beat=name == "onboarding")
    out(f"$ {worker.shown}   (GARRISON_AUTOMATIONS={DEMOS[name]})")
    try:
        if not worker.wait_ready(READY_TIMEOUT):
            out("the worker did not start:\n" + worker.tail())
            return 1
        out("worker ready\n")
        if name == "onboarding":
            return _onboarding(client, worker, out)
        out("Ryan and Alice inquire. Alice responds at +1.5s, Ryan never does. Every second a checkTimeout")
        out("pulse goes to both (casern's setInterval); past timeoutAfter, emailSupport mails support.\n")
        return _story(client, Log(out), worker)
    finally:
        code = worker.stop()
        out(f"worker stopped (exit code {code})")
        client.db.dispose()


# -- onboarding -------------------------------------------------------------------------------------


@dataclass(order=True, frozen=True, slots=True)
class Line:
    """One printed line. ``kind`` orders lines of the same moment (a log line's moment is that of the message
    that woke the run): 0 an event, 1 a journey's log line, 2 an event a journey ingested; so an event comes
    before the lines logged on waking up to it, and those before the events the journey ingested then."""

    at: float
    kind: int
    order: tuple[int, int]
    text: str


class Feed:
    """The key's events (system events left out) and its runs' log lines, each printed once, in time order,
    with the seconds since ``start``."""

    def __init__(self, client: Garrison, key: str, start: float, out: Out) -> None:
        self.client = client
        self.key = key
        self.start = start
        self.out = out
        self.last_seq = 0
        self.logged: dict[int, int] = {}
        self.waiting: list[Line] = []

    def runs(self) -> list[RunInfo]:
        return self.client.runs(automation=onboarding.name, key=self.key)

    def poll(self, runs: list[RunInfo]) -> None:
        """Take in what is new; :meth:`flush` prints it."""
        with self.client.db.session() as s:
            rows = s.execute(
                select(EVENTS.c.seq, EVENTS.c.name, EVENTS.c.idempotency_key, EVENTS.c.created_at)
                .where(EVENTS.c.tenant == self.client.settings.tenant, EVENTS.c.key == self.key,
                       EVENTS.c.seq > self.last_seq)
                .order_by(EVENTS.c.seq)
            ).all()
        for row in rows:
            self.last_seq = row.seq
            if not row.name.startswith(SYSTEM_PREFIX):
                at = as_utc(row.created_at).timestamp()
                kind = 2 if (row.idempotency_key or "").startswith(JOURNEY_EMIT) else 0
                self.waiting.append(Line(at, kind, (row.seq, 0), f"creating event users[{self.key}][{row.name}]"))
        for info in runs:
            seen = self.logged.get(info.id, 0)
            for i, entry in enumerate(info.log[seen:], start=seen):
                at = as_utc(datetime.fromisoformat(entry["at"])).timestamp()
                self.waiting.append(Line(at, 1, (info.id, i), "    " + entry["text"].replace("\t", "    ")))
            self.logged[info.id] = len(info.log)

    def flush(self, until: float | None = None) -> None:
        """Print, in time order, the lines taken in that are not later than ``until`` (all by default)."""
        self.waiting.sort()
        ready = [line for line in self.waiting if until is None or line.at <= until]
        self.waiting = self.waiting[len(ready):]
        for line in ready:
            self.out(f"[{line.at - self.start:5.2f}s] {line.text}")


def _onboarding(client: Garrison, worker: Worker, out: Out) -> int:
    out(f"The events seed's onboarding journey for {USER}, in real time (about {math.ceil(TIMELINE[-1][0])} s).")
    out("The demo ingests the user's own events at the seed's times; the reminders are the journey's,")
    out("woken by durable timers (SQL rows and ETA tasks; beat's relay sweeps them). Printed: each event")
    out("as it is stored and each line the journey logs, with the seconds since the first event.\n")
    pending = list(TIMELINE)
    start = time.time()
    feed = Feed(client, USER, start, out)
    deadline = start + TIMELINE[-1][0] + ONBOARDING_GRACE
    run: RunInfo | None = None
    while True:
        while pending and pending[0][0] <= time.time() - start:
            _, name, data = pending.pop(0)
            client.ingest(name, USER, data)
        runs = feed.runs()
        run = runs[0] if runs else None
        feed.poll(runs)
        feed.flush(time.time() - HOLD_BACK)
        if run is not None and run.status in ENDED:
            break
        if time.time() > deadline or worker.proc.poll() is not None:
            feed.flush()
            state = run.status if run is not None else "not started"
            why = "the worker exited" if worker.proc.poll() is not None else "the journey did not finish in time"
            out(f"\n{why} (run: {state}); worker log:\n" + worker.tail())
            return 1
        time.sleep(0.05)
    feed.flush()
    took = (run.ended_at or run.updated_at).timestamp() - start
    out(f"\nresult: {run.label} {run.status} at +{took:.2f}s, result {json.dumps(run.result, sort_keys=True)}")
    if run.error:
        shown = {k: v for k, v in run.error.items() if k != "traceback"}
        out(f"error: {json.dumps(shown, sort_keys=True)}  (the traceback: garrison inspect {USER} --traceback)")
    out(f"\n$ garrison inspect {USER}")
    out(render.key_report(inspect_key(client, USER)))
    directory = client.settings.data_dir
    out(f"\nworker log: {directory / 'worker.log'}")
    out(f"look further: GARRISON_DATA_DIR={directory} garrison runs")
    if run.status != "completed":
        out("\nthe journey did not complete; worker log:\n" + worker.tail())
        return 1
    return 0


# -- support ----------------------------------------------------------------------------------------


@dataclass
class Log:
    """Timestamped lines, relative to the first send."""

    out: Out
    start: float = field(default_factory=time.time)

    def __call__(self, what: str, text: str, at: float | None = None) -> None:
        at = time.time() if at is None else at
        clock = time.strftime("%H:%M:%S", time.localtime(at))
        self.out(f"{clock} {at - self.start:+6.2f}s  {what:<6} {text}")


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
            out("the demo did not finish in time; worker log:\n" + worker.tail())
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
