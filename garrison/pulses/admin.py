"""Operating pulse schedules: add, list them with their recent slots, pause, resume, remove (all per tenant).

Every query here filters on the tenant. Times are aware UTC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update

from garrison.clock import as_utc
from garrison.core.db import Database
from garrison.durations import format_duration
from garrison.errors import NotFound
from garrison.models.pulses import PULSE_SLOTS, SCHEDULES
from garrison.pulses.fanout import save_schedule, schedule_values, spec_of
from garrison.pulses.schedules import PulseSchedule


@dataclass(frozen=True, slots=True)
class SlotInfo:
    """One fired slot of a pulse: running (fanning out), done (every entity sent) or skipped (with the
    reason, e.g. the overlap policy); ``done`` / ``total`` entities."""

    id: int
    slot: datetime
    status: str
    done: int
    total: int | None
    reason: str | None
    started_at: datetime
    finished_at: datetime | None

    @property
    def progress(self) -> str:
        if self.status == "skipped":
            return f"skipped ({self.reason})" if self.reason else "skipped"
        total = "?" if self.total is None else f"{self.total:,}"
        return f"{self.status} {self.done:,}/{total}"


@dataclass(frozen=True, slots=True)
class PulseInfo:
    """A pulse schedule as stored, where beat stands (``next_slot``), and its recent slots, newest first."""

    name: str
    tenant: str
    automation: str
    message: str
    cron: str | None
    every_seconds: float | None
    timezone: str
    where: Any
    data: Any
    missed: str
    missed_limit: int
    overlap: str
    grace: float
    paused: bool
    source: str
    next_slot: datetime | None
    created_at: datetime
    updated_at: datetime
    slots: list[SlotInfo] = field(default_factory=list)

    @property
    def when(self) -> str:
        """``0 9 * * 1-5 (Europe/Paris)`` or ``every 30s``."""
        if self.cron is not None:
            return f"{self.cron} ({self.timezone})"
        return f"every {format_duration(timedelta(seconds=self.every_seconds or 0))}"

    @property
    def last(self) -> SlotInfo | None:
        """The newest slot fired, if any."""
        return self.slots[0] if self.slots else None


def _info(row: Any, slots: list[SlotInfo]) -> PulseInfo:
    return PulseInfo(
        name=row.name, tenant=row.tenant, automation=row.automation, message=row.message, cron=row.cron,
        every_seconds=row.every_seconds, timezone=row.timezone, where=row.where, data=row.data,
        missed=row.missed, missed_limit=row.missed_limit, overlap=row.overlap, grace=row.grace, paused=row.paused,
        source=row.source, next_slot=as_utc(row.next_slot) if row.next_slot else None,
        created_at=as_utc(row.created_at), updated_at=as_utc(row.updated_at), slots=slots,
    )


def _slots(s: Any, tenant: str, schedule_id: int, limit: int) -> list[SlotInfo]:
    rows = s.execute(
        select(PULSE_SLOTS).where(PULSE_SLOTS.c.tenant == tenant, PULSE_SLOTS.c.schedule_id == schedule_id)
        .order_by(PULSE_SLOTS.c.slot.desc()).limit(limit)
    ).all()
    return [
        SlotInfo(id=r.id, slot=as_utc(r.slot), status=r.status, done=r.done, total=r.total, reason=r.reason,
                 started_at=as_utc(r.started_at), finished_at=as_utc(r.finished_at) if r.finished_at else None)
        for r in rows
    ]


def save_pulse(db: Database, tenant: str, spec: PulseSchedule, now: datetime) -> None:
    """Add a run-time pulse, or replace the definition of the tenant's pulse of that name.

    A new pulse starts at its first slot after ``now``. Replacing one keeps its paused flag and its next
    slot, unless the timing (cron, interval or timezone) changed: then it starts again at the new timing's
    first slot after ``now``. The row becomes a run-time one (``source`` sql), so a pulse defined in code
    and replaced here is no longer overwritten by code at beat's next sync.
    """
    values = schedule_values(spec)
    with db.session() as s:
        row = s.execute(
            select(SCHEDULES).where(SCHEDULES.c.tenant == tenant, SCHEDULES.c.name == spec.name).with_for_update()
        ).first()
        if row is not None:
            changes: dict[str, Any] = {**values, "source": "sql", "updated_at": now}
            timing = ("cron", "every_seconds", "timezone")
            if any(getattr(row, k) != values[k] for k in timing):
                changes["next_slot"] = spec.next_after(now)
            s.execute(update(SCHEDULES).where(SCHEDULES.c.tenant == tenant, SCHEDULES.c.id == row.id)
                      .values(**changes))
            return
    save_schedule(db, tenant, spec, now, source="sql")


def list_pulses(db: Database, tenant: str, *, slots: int = 10) -> list[PulseInfo]:
    """The tenant's pulses by name, each with its last ``slots`` slots."""
    with db.session() as s:
        rows = s.execute(select(SCHEDULES).where(SCHEDULES.c.tenant == tenant).order_by(SCHEDULES.c.name)).all()
        return [_info(r, _slots(s, tenant, r.id, slots)) for r in rows]


def get_pulse(db: Database, tenant: str, name: str, *, slots: int = 10) -> PulseInfo:
    """The tenant's pulse of that name (NotFound otherwise) with its last ``slots`` slots."""
    with db.session() as s:
        row = s.execute(select(SCHEDULES).where(SCHEDULES.c.tenant == tenant, SCHEDULES.c.name == name)).first()
        if row is None:
            raise NotFound(f"no pulse named {name!r}", tenant=tenant, pulse=name)
        return _info(row, _slots(s, tenant, row.id, slots))


def set_paused(db: Database, tenant: str, name: str, paused: bool, now: datetime) -> PulseInfo:
    """Pause or resume. Resuming starts again at the first slot after ``now``: the slots that fell in the
    pause are not fired late, whatever the missed-slot policy (that policy is for beat's downtime). A
    running slot is not stopped by a pause; it finishes."""
    with db.session() as s:
        row = s.execute(
            select(SCHEDULES).where(SCHEDULES.c.tenant == tenant, SCHEDULES.c.name == name).with_for_update()
        ).first()
        if row is None:
            raise NotFound(f"no pulse named {name!r}", tenant=tenant, pulse=name)
        values: dict[str, Any] = {"paused": paused, "updated_at": now}
        if not paused and row.paused:
            values["next_slot"] = spec_of(row).next_after(now)
        s.execute(update(SCHEDULES).where(SCHEDULES.c.tenant == tenant, SCHEDULES.c.id == row.id).values(**values))
    return get_pulse(db, tenant, name)


def remove_pulse(db: Database, tenant: str, name: str) -> None:
    """Delete a schedule; its slots stay as history. A pulse defined in code comes back at the next sync."""
    with db.session() as s:
        done = s.execute(
            delete(SCHEDULES).where(SCHEDULES.c.tenant == tenant, SCHEDULES.c.name == name)
            .returning(SCHEDULES.c.id)
        ).first()
    if done is None:
        raise NotFound(f"no pulse named {name!r}", tenant=tenant, pulse=name)
