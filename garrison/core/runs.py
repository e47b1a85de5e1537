"""Journey runs as operators see them: listing, one run with its timers, retry and cancel.

The ``garrison_runs`` table is written by the engine in the transaction of each run's state change, so
it always agrees with the entity. Retry and cancel are *events* (``garrison/run.retry``,
``garrison/run.cancel``) targeted at the journey: they go through the engine like everything else, in
order with the key's other messages, never around it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from garrison.clock import as_utc
from garrison.core.db import Database
from garrison.errors import NotFound
from garrison.models import RUNS, TIMERS

STATUSES = ("running", "waiting", "sleeping", "stepping", "completed", "failed", "cancelled")


@dataclass(frozen=True, slots=True)
class TimerInfo:
    name: str
    due_at: datetime
    status: str
    fired_at: datetime | None


@dataclass(frozen=True, slots=True)
class RunInfo:
    """One journey run: ``id`` is what ``garrison retry run/ID`` and ``garrison cancel ID`` take."""

    id: int
    tenant: str
    automation: str
    key: str
    number: int
    status: str
    trigger: dict[str, Any]
    waiting: dict[str, Any] | None
    history: list[dict[str, Any]]
    log: list[dict[str, Any]]
    result: Any
    error: dict[str, Any] | None
    started_at: datetime
    updated_at: datetime
    ended_at: datetime | None
    timers: list[TimerInfo] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"run/{self.id}"


def _info(row: Any, timers: list[TimerInfo] | None = None) -> RunInfo:
    return RunInfo(
        id=row.id, tenant=row.tenant, automation=row.automation, key=row.key, number=row.number,
        status=row.status, trigger=row.trigger or {}, waiting=row.waiting, history=row.history or [],
        log=row.log or [], result=row.result, error=row.error, started_at=as_utc(row.started_at),
        updated_at=as_utc(row.updated_at), ended_at=as_utc(row.ended_at) if row.ended_at else None,
        timers=timers or [],
    )


def list_runs(
    db: Database,
    tenant: str,
    *,
    automation: str | None = None,
    key: str | None = None,
    status: str | None = None,
    limit: int = 100,
    timers: bool = False,
) -> list[RunInfo]:
    """Runs of a tenant, newest first, filtered by journey, key and status."""
    query = select(RUNS).where(RUNS.c.tenant == tenant)
    if automation is not None:
        query = query.where(RUNS.c.automation == automation)
    if key is not None:
        query = query.where(RUNS.c.key == key)
    if status is not None:
        query = query.where(RUNS.c.status == status)
    with db.session(readonly=True) as s:
        rows = s.execute(query.order_by(RUNS.c.id.desc()).limit(limit)).all()
        if not timers:
            return [_info(r) for r in rows]
        return [_info(r, _timers(s, r)) for r in rows]


def get_run(db: Database, tenant: str, run_id: int) -> RunInfo:
    with db.session(readonly=True) as s:
        row = s.execute(select(RUNS).where(RUNS.c.tenant == tenant, RUNS.c.id == run_id)).first()
        if row is None:
            raise NotFound("no such run", tenant=tenant, run=run_id)
        return _info(row, _timers(s, row))


def count_runs(db: Database, tenant: str) -> dict[str, int]:
    """How many runs of the tenant are in each status."""
    with db.session(readonly=True) as s:
        rows = s.execute(
            select(RUNS.c.status, func.count()).where(RUNS.c.tenant == tenant).group_by(RUNS.c.status)
        ).all()
    return {status: count for status, count in rows}


def _timers(s: Any, row: Any) -> list[TimerInfo]:
    prefix = f"{row.number}:"
    found = s.execute(
        select(TIMERS.c.name, TIMERS.c.due_at, TIMERS.c.status, TIMERS.c.fired_at)
        .where(
            TIMERS.c.tenant == row.tenant, TIMERS.c.automation == row.automation, TIMERS.c.key == row.key,
            TIMERS.c.name.startswith(prefix, autoescape=True),
        )
        .order_by(TIMERS.c.due_at)
    ).all()
    return [
        TimerInfo(t.name, as_utc(t.due_at), t.status, as_utc(t.fired_at) if t.fired_at else None) for t in found
    ]


def parse_run_id(value: str | int) -> int:
    """``12``, ``"12"`` or ``"run/12"`` -> 12."""
    if isinstance(value, int):
        return value
    text = value.strip()
    if text.startswith("run/"):
        text = text[4:]
    if not text.isdigit():
        raise NotFound(f"{value!r} is not a run id (run/ID)", run=value)
    return int(text)
