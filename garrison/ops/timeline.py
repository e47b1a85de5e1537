"""A journey run as a picture: one bar per call (wait, sleep, step, emitted event...) on a time axis.

The run's history says *what* each call returned; *when* comes from the rows each call left behind: a
step is an effect (created when the run reached it, done when its function returned), a wait with a
timeout and a sleep are timers (created when the run reached them, fired when their time came), a matched
wait ends when its event was ingested, an emitted event carries its time. A call with none of these
starts and ends where the one before it ended. The call the run is suspended in is drawn open, up to now,
with its timer's due time; a step that failed for good (the run failed there) is drawn failed.

Runs are read through :class:`~garrison.core.runs.RunInfo` only (``client.run(id)``), so the picture
does not depend on where run history is stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from garrison.clock import as_utc
from garrison.core.runs import RunInfo
from garrison.core.runtime import Runtime
from garrison.models import EFFECTS, TIMERS

__all__ = ["Call", "Timeline", "build_timeline"]

KINDS = {"wait": "wait_for", "sleep": "sleep", "step": "step", "emit": "ingest", "events": "events", "now": "now"}


@dataclass(frozen=True, slots=True)
class Call:
    """One call of the run. ``end`` is None while the run is suspended in it; ``due`` is its timer's due
    time (a wait's timeout, a sleep's end); ``outcome`` is ``done``, ``matched``, ``timed out``, ``open``,
    ``retrying`` or ``failed``."""

    index: int
    kind: str
    name: str
    start: datetime
    end: datetime | None
    outcome: str
    result: Any = None
    due: datetime | None = None
    attempts: int = 0
    error: str | None = None
    # Earlier tries of a step that failed for good (a run retried after it failed): (start, end, error).
    earlier: tuple[tuple[datetime, datetime, str | None], ...] = ()

    @property
    def label(self) -> str:
        verb = KINDS.get(self.kind, self.kind)
        return f"{verb}({self.name})" if self.name else f"{verb}()"

    def duration(self, now: datetime) -> float:
        return max(((self.end or now) - self.start).total_seconds(), 0.0)


@dataclass(slots=True)
class Timeline:
    """The run and its calls, from ``start`` (the run's start) to ``end`` (its end, or now)."""

    run: RunInfo
    start: datetime
    end: datetime
    calls: list[Call] = field(default_factory=list)

    @property
    def span(self) -> float:
        """Seconds the picture covers (at least a millisecond, so every bar has a width)."""
        return max((self.end - self.start).total_seconds(), 0.001)

    def x(self, when: datetime, width: float) -> float:
        """Where ``when`` falls on an axis ``width`` wide."""
        return round(min(max((when - self.start).total_seconds() / self.span, 0.0), 1.0) * width, 2)

    def ticks(self, count: int = 5) -> list[tuple[float, str]]:
        """``count + 1`` evenly spaced (fraction of the axis, label) pairs: ``+0s``, ``+1.5s``..."""
        return [(i / count, _seconds(self.span * i / count)) for i in range(count + 1)]


def build_timeline(client: Runtime, run: RunInfo) -> Timeline:
    """The calls of ``run`` (from ``client.run(id)``) with their times, read from its steps' effects and
    its timers."""
    now = client.clock.now()
    steps, timers, earlier = _rows(client, run)
    calls: list[Call] = []
    previous = run.started_at
    for index, op in enumerate(run.history):
        call = _done_call(index, op, previous, steps.get(index), timers.get(index))
        if earlier.get(index):
            call = replace(call, start=earlier[index][0][0], earlier=tuple(earlier[index]))
        calls.append(call)
        previous = max(previous, call.end or previous)
    open_index = len(run.history)
    waiting = run.waiting or {}
    if waiting and run.status in ("waiting", "sleeping", "stepping", "running"):
        timer = timers.get(open_index)
        step = steps.get(open_index)
        start = previous
        if timer is not None:
            start = timer["created_at"]
        elif step is not None:
            start = step["created_at"]
        due = _when(waiting.get("due_at")) or (timer["due_at"] if timer else None)
        name = str(waiting.get("name") or "")
        if waiting.get("kind") == "sleep":
            name = ""
        outcome = "retrying" if step is not None and step["attempts"] else "open"
        calls.append(Call(open_index, str(waiting.get("kind")), name, start, None, outcome, due=due,
                          attempts=step["attempts"] if step else 0, error=step["error"] if step else None))
    elif run.status == "failed" and open_index in steps:
        step = steps[open_index]
        calls.append(Call(open_index, "step", step["name"], step["created_at"], step["done_at"] or run.updated_at,
                          "failed", attempts=step["attempts"], error=step["error"]))
    end = run.ended_at or (run.updated_at if run.status == "failed" else now)
    for call in calls:
        end = max(end, call.start, call.end or call.start)
        if call.end is None and call.due is not None:  # an open call's timer: show when it will fire
            end = max(end, call.due)
    return Timeline(run=run, start=run.started_at, end=max(end, run.started_at), calls=calls)


def _done_call(index: int, op: dict[str, Any], previous: datetime, step: dict[str, Any] | None,
               timer: dict[str, Any] | None) -> Call:
    kind = str(op.get("kind"))
    name = str(op.get("name") or "")
    start = timer["created_at"] if timer else step["created_at"] if step else previous
    due = timer["due_at"] if timer else None
    if kind == "step":
        end = (step or {}).get("done_at") or start
        return Call(index, kind, name, start, end, "done", op.get("result"),
                    attempts=step["attempts"] if step else 0)
    if kind == "wait":
        result = op.get("result")
        if result is None:
            end = (timer or {}).get("fired_at") or due or start
            return Call(index, kind, name, start, end, "timed out", None, due=due)
        arrived = max((_when(e.get("at")) or start for e in result), default=start)
        return Call(index, kind, name, start, max(arrived, start), "matched", [e.get("data") for e in result],
                    due=due)
    if kind == "sleep":
        until = _when(op.get("until"))
        end = (timer or {}).get("fired_at") or until or start
        return Call(index, kind, "", start, max(end, start), "done", None, due=until)
    if kind == "emit":
        at = _when(op.get("at")) or start
        return Call(index, kind, name, at, at, "done", op.get("data"))
    return Call(index, kind, name, start, start, "done", op.get("result"))


def _rows(client: Runtime, run: RunInfo) -> tuple[
    dict[int, dict[str, Any]], dict[int, dict[str, Any]], dict[int, list[tuple[datetime, datetime, str | None]]]
]:
    """The run's step effects (the newest per op, and the earlier ones that failed) and timers, by the
    history position (op) they belong to."""
    steps: dict[int, dict[str, Any]] = {}
    timers: dict[int, dict[str, Any]] = {}
    earlier: dict[int, list[tuple[datetime, datetime, str | None]]] = {}
    prefix = f"{run.number}:"
    with client.db.session() as s:
        for r in s.execute(
            select(EFFECTS.c.payload, EFFECTS.c.created_at, EFFECTS.c.done_at, EFFECTS.c.attempts, EFFECTS.c.error,
                   EFFECTS.c.status)
            .where(EFFECTS.c.tenant == run.tenant, EFFECTS.c.automation == run.automation, EFFECTS.c.key == run.key,
                   EFFECTS.c.kind == "step")
            .order_by(EFFECTS.c.id)
        ):
            payload = r.payload or {}
            if payload.get("run") != run.number or not isinstance(payload.get("op"), int):
                continue
            op = payload["op"]
            if op in steps and steps[op]["status"] == "failed":  # a run retry tried this step again
                earlier.setdefault(op, []).append((steps[op]["created_at"], as_utc(r.created_at), steps[op]["error"]))
            steps[op] = {
                "name": str(payload.get("step") or ""), "created_at": as_utc(r.created_at),
                "done_at": as_utc(r.done_at) if r.done_at else None, "attempts": int(r.attempts or 0),
                "error": r.error, "status": r.status,
            }
        for r in s.execute(
            select(TIMERS.c.name, TIMERS.c.created_at, TIMERS.c.due_at, TIMERS.c.fired_at, TIMERS.c.status)
            .where(TIMERS.c.tenant == run.tenant, TIMERS.c.automation == run.automation, TIMERS.c.key == run.key,
                   TIMERS.c.name.startswith(prefix, autoescape=True))
        ):
            op = r.name[len(prefix):]
            if op.isdigit():
                timers[int(op)] = {"created_at": as_utc(r.created_at), "due_at": as_utc(r.due_at),
                                   "fired_at": as_utc(r.fired_at) if r.fired_at else None, "status": r.status}
    return steps, timers, earlier


def _when(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return as_utc(datetime.fromisoformat(text))
    except ValueError:
        return None


def _seconds(seconds: float) -> str:
    if seconds >= 3600:
        return f"+{seconds / 3600:.1f}h"
    if seconds >= 60:
        return f"+{seconds / 60:.1f}m"
    if seconds >= 1:
        return f"+{seconds:.1f}s"
    return f"+{timedelta(seconds=seconds).total_seconds() * 1000:.0f}ms"
