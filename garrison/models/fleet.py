"""Tables that let periodic work and the fleet find what they need through an index, never a scan.

- ``Pending``: a key with work to do (messages past its cursor, or an entity behind it). Ingest writes
  it in the transaction of the event; the engine removes it, in the transaction that catches the key up,
  only when nothing newer arrived (``seq``). The relay finds stalled keys here by ``since``, and a worker
  claims other pending keys from it to batch single events together. ``published_at`` says a
  ``garrison.process`` task was sent for the key and not finished yet, so another ingest need not send
  one; ``needs`` names an automation that no worker which took the key had (a rolling deploy): the key
  waits for a worker of that automation.
- ``Tenant``: every tenant that ever ingested, so the relay, the timer sweep and the beat loop over a
  small table instead of a ``DISTINCT`` over millions of rows.
- ``AutomationRecord``: the automations the fleet runs, registered by every worker at start and kept
  alive by its heartbeat, each with its route (which messages it takes) as data. A worker without an
  automation reads the route here and never consumes a message meant for it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import BigInteger, Column, DateTime, Index, String, Table, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from garrison.models.tables import BigId, _json, _when


class Pending(SQLModel, table=True):
    __tablename__ = "garrison_pending"
    __table_args__ = (
        # The relay's and the claim's lookup: keys of a tenant waiting for any worker, oldest first.
        Index("ix_garrison_pending_due", "tenant", "since", postgresql_where=text("needs IS NULL"),
              sqlite_where=text("needs IS NULL")),
        # Keys waiting for a worker that has a given automation.
        Index("ix_garrison_pending_needs", "tenant", "needs", "since", postgresql_where=text("needs IS NOT NULL"),
              sqlite_where=text("needs IS NOT NULL")),
    )

    tenant: str = Field(sa_column=Column(String(64), primary_key=True))
    key: str = Field(sa_column=Column(String(255), primary_key=True))
    seq: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    since: datetime = _when()
    published_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=True))
    needs: str | None = Field(default=None, sa_column=Column(String(255), nullable=True))


class Tenant(SQLModel, table=True):
    __tablename__ = "garrison_tenants"
    __table_args__ = (UniqueConstraint("name", name="uq_garrison_tenants_name"),)

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    name: str = Field(sa_column=Column(String(64), nullable=False))
    created_at: datetime = _when()


class AutomationRecord(SQLModel, table=True):
    __tablename__ = "garrison_automations"

    name: str = Field(sa_column=Column(String(255), primary_key=True))
    style: str = Field(sa_column=Column(String(64), nullable=False))
    # {"names": [glob, ...] or null (every untargeted name)}: see garrison.core.contract.Route.
    route: Any = _json(nullable=False)
    holder: str = Field(default="", sa_column=Column(String(255), nullable=False))
    first_seen_at: datetime = _when()
    last_seen_at: datetime = _when()
    retired_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=True))


PENDING = cast(Table, Pending.__table__)  # type: ignore[attr-defined]
TENANTS = cast(Table, Tenant.__table__)  # type: ignore[attr-defined]
AUTOMATIONS = cast(Table, AutomationRecord.__table__)  # type: ignore[attr-defined]
