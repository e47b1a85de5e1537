"""Tables of pulses (issue 4): schedules stored in SQL, and one row per fired slot.

- ``Schedule``: a pulse definition per tenant (from code or added at run time), with where the beat
  stands (``next_slot``) and whether it is paused.
- ``PulseSlot``: one slot of one schedule. Its unique key ``(tenant, schedule_id, slot)`` is what makes a
  slot fire once even when two beats run; ``cursor`` is the fan-out's keyset position (the last entity
  key sent), advanced in the same transaction as each chunk's events, so a duplicated or restarted chunk
  resumes after it instead of sending again; ``total`` / ``done`` are the progress operators see.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlmodel import Field, SQLModel

from garrison.models.tables import BigId, _json, _when


class Schedule(SQLModel, table=True):
    __tablename__ = "garrison_schedules"
    __table_args__ = (UniqueConstraint("tenant", "name", name="uq_garrison_schedules_name"),)

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    tenant: str = Field(sa_column=Column(String(64), nullable=False))
    name: str = Field(sa_column=Column(String(255), nullable=False))
    automation: str = Field(sa_column=Column(String(255), nullable=False))
    message: str = Field(sa_column=Column(String(255), nullable=False))
    data: Any = _json(nullable=False)
    cron: str | None = Field(default=None, sa_column=Column(String(255), nullable=True))
    every_seconds: float | None = Field(default=None, sa_column=Column(Float, nullable=True))
    timezone: str = Field(default="UTC", sa_column=Column(String(64), nullable=False))
    where: Any = _json()
    missed: str = Field(default="latest", sa_column=Column(String(16), nullable=False))
    missed_limit: int = Field(default=100, sa_column=Column(Integer, nullable=False))
    overlap: str = Field(default="skip", sa_column=Column(String(16), nullable=False))
    grace: float = Field(default=5.0, sa_column=Column(Float, nullable=False))
    paused: bool = Field(default=False, sa_column=Column(Boolean, nullable=False))
    # code: defined next to the automation (synced at start); sql: added at run time.
    source: str = Field(default="sql", sa_column=Column(String(16), nullable=False))
    next_slot: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=True))
    created_at: datetime = _when()
    updated_at: datetime = _when()


class PulseSlot(SQLModel, table=True):
    __tablename__ = "garrison_pulse_slots"
    __table_args__ = (
        UniqueConstraint("tenant", "schedule_id", "slot", name="uq_garrison_pulse_slots_slot"),
        Index("ix_garrison_pulse_slots_status", "tenant", "status"),
        Index("ix_garrison_pulse_slots_finished", "tenant", "status", "finished_at"),  # retention
    )

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    tenant: str = Field(sa_column=Column(String(64), nullable=False))
    schedule_id: int = Field(sa_column=Column(BigInteger, nullable=False))
    schedule: str = Field(sa_column=Column(String(255), nullable=False))
    slot: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    # running: fanning out. done: every entity sent. skipped: not fired (overlap), with the reason.
    status: str = Field(default="running", sa_column=Column(String(16), nullable=False))
    reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    cursor: str | None = Field(default=None, sa_column=Column(String(255), nullable=True))
    total: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    done: int = Field(default=0, sa_column=Column(Integer, nullable=False))
    started_at: datetime = _when()
    updated_at: datetime = _when()
    finished_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=True))


SCHEDULES = cast(Table, Schedule.__table__)  # type: ignore[attr-defined]
PULSE_SLOTS = cast(Table, PulseSlot.__table__)  # type: ignore[attr-defined]


class Lease(SQLModel, table=True):
    """A named lease with an owner token and an expiry (the beat's leadership). ``epoch`` goes up every
    time the lease changes hands, so a deposed holder's view is detectably stale."""

    __tablename__ = "garrison_leases"

    tenant: str = Field(sa_column=Column(String(64), primary_key=True))
    name: str = Field(sa_column=Column(String(255), primary_key=True))
    owner: str = Field(sa_column=Column(String(255), nullable=False))
    epoch: int = Field(default=1, sa_column=Column(BigInteger, nullable=False))
    expires_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    acquired_at: datetime = _when()
    renewed_at: datetime = _when()


LEASES = cast(Table, Lease.__table__)  # type: ignore[attr-defined]
