"""The tables garrison keeps.

- ``Event``: the append-only log. ``seq`` is a per-(tenant, key) sequence handed out under the stream's
  row lock, so sequence order is commit order for a key (a global id is not: guarantee 2).
- ``Stream``: the ingest side of a key: the last sequence handed out. Only ingest writes it.
- ``Cursor``: the worker side of a key: the last sequence applied. Workers lock this row (never the
  stream's), so an ingest never waits for a worker.
- ``Entity``: one automation's state for one key, with its version and cursor. Its ``status`` is
  ``active`` (it has considered every message up to its key's cursor), ``behind`` (messages after its own
  ``cursor`` still wait for it: a worker without the automation took the key, or it was un-halted) or
  ``halted`` (a message failed under ``on_failure="halt"``; it waits at that message for a retry or skip).
- ``StateVersion``: the history of an entity's states, with the message that produced each and a
  commit-safe ``txid`` the change feed resumes from; retention keeps the recent part of it.
- ``Effect``: the outbox: side effects written with the state change that caused them.
- ``Failure``: a message a handler refused by raising, with its traceback, retryable.
- ``Timer``: a durable timer (a journey's wait timeout or sleep). Within the horizon it is also an ETA
  task; firing claims the row (pending -> fired) and ingests a ``garrison/timer`` event for its entity in
  the same transaction, so a duplicated ETA message fires nothing twice. Cancelling is an UPDATE.
- ``Run``: one journey run as operators see it (status, history, open wait, result or error), written
  by the engine in the transaction of the state change. The entity state is the source of truth.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import JSON, BigInteger, Column, DateTime, Index, Integer, String, Table, Text, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from garrison.clock import utcnow

metadata = SQLModel.metadata

JsonType = JSON().with_variant(JSONB(), "postgresql")
# SQLite only auto-increments an INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def _json(nullable: bool = True) -> Any:
    return Field(default=None, sa_column=Column(JsonType, nullable=nullable))


def _when(index: bool = False) -> Any:
    return Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False, index=index))


def _tenant() -> Any:
    return Field(sa_column=Column(String(64), primary_key=True))


class Event(SQLModel, table=True):
    __tablename__ = "garrison_events"
    __table_args__ = (
        UniqueConstraint("tenant", "key", "seq", name="uq_garrison_events_key_seq"),
        UniqueConstraint("tenant", "idempotency_key", name="uq_garrison_events_idempotency"),
        Index("ix_garrison_events_tenant_name", "tenant", "name"),
        # Retention finds old events through it (garrison.core.retention).
        Index("ix_garrison_events_created", "tenant", "created_at"),
    )

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    tenant: str = Field(sa_column=Column(String(64), nullable=False))
    key: str = Field(sa_column=Column(String(255), nullable=False))
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    name: str = Field(sa_column=Column(String(255), nullable=False))
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JsonType, nullable=False))
    target: str | None = Field(default=None, sa_column=Column(String(255), nullable=True))
    idempotency_key: str | None = Field(default=None, sa_column=Column(String(255), nullable=True))
    system: bool = False
    created_at: datetime = _when()
    # An atomic batch (``ingest_many(..., atomic=True)``): the sequence number of its first event and how
    # many it has. Its events have consecutive sequence numbers of one key and apply to an entity together
    # or not at all. (Columns added after the first release come last, as a migration adds them.)
    batch_id: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    batch_size: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    # The W3C traceparent the event was ingested under, when tracing is on (GARRISON_TRACING=otel). Last,
    # where the migration that added it (0004) puts it.
    trace: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))


class Stream(SQLModel, table=True):
    __tablename__ = "garrison_streams"

    tenant: str = _tenant()
    key: str = Field(sa_column=Column(String(255), primary_key=True))
    last_seq: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    updated_at: datetime = _when(index=True)


class Cursor(SQLModel, table=True):
    __tablename__ = "garrison_cursors"

    tenant: str = _tenant()
    key: str = Field(sa_column=Column(String(255), primary_key=True))
    processed_seq: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    updated_at: datetime = _when()


class Entity(SQLModel, table=True):
    __tablename__ = "garrison_entities"
    __table_args__ = (
        Index("ix_garrison_entities_automation", "tenant", "automation", "key"),
        # The few entities that wait (behind or halted), for retention, stats and inspect.
        Index("ix_garrison_entities_waiting", "tenant", "key", "automation",
              postgresql_where=text("status <> 'active'"), sqlite_where=text("status <> 'active'")),
        # A pulse's last pass: the entities created just before its slot (garrison.pulses.fanout).
        Index("ix_garrison_entities_created", "tenant", "automation", "created_at"),
    )

    tenant: str = _tenant()
    key: str = Field(sa_column=Column(String(255), primary_key=True))
    automation: str = Field(sa_column=Column(String(255), primary_key=True))
    state: Any = _json()
    version: int = 0
    cursor: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    created_at: datetime = _when()
    updated_at: datetime = _when()
    status: str = Field(default="active", sa_column=Column(String(16), nullable=False, server_default="active"))


class StateVersion(SQLModel, table=True):
    __tablename__ = "garrison_state_versions"
    # The change feed (``follow``) and retention walk versions in ``txid`` order (garrison.core.feed).
    __table_args__ = (Index("ix_garrison_state_versions_txid", "tenant", "txid"),)

    tenant: str = _tenant()
    key: str = Field(sa_column=Column(String(255), primary_key=True))
    automation: str = Field(sa_column=Column(String(255), primary_key=True))
    version: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    state: Any = _json()
    message: str = Field(sa_column=Column(String(255), nullable=False))
    data: Any = _json()
    event_id: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    seq: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    created_at: datetime = _when()
    # A commit-safe position for the change feed: on PostgreSQL the writing transaction's id (at least that
    # of the entity's previous version), on SQLite a counter bumped by each writing transaction. 0: written
    # before the feed existed.
    txid: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))


# The predicate of the index of unfinished effects, spelled as literal SQL wherever it is queried, so the
# planner can prove the index applies (a bound parameter would hide the values).
EFFECT_OPEN = "status NOT IN ('done', 'failed')"


class Effect(SQLModel, table=True):
    __tablename__ = "garrison_effects"
    __table_args__ = (
        Index("ix_garrison_effects_status", "status", "created_at"),
        # Unfinished effects only (small, whatever the history): the relay's sweep of a tenant, and the
        # check that an entity's earlier effects are finished before the next one runs.
        Index("ix_garrison_effects_open", "tenant", "automation", "key", "id",
              postgresql_where=text(EFFECT_OPEN), sqlite_where=text(EFFECT_OPEN)),
    )

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    tenant: str = Field(sa_column=Column(String(64), nullable=False))
    automation: str = Field(sa_column=Column(String(255), nullable=False))
    key: str = Field(sa_column=Column(String(255), nullable=False))
    kind: str = Field(sa_column=Column(String(64), nullable=False))
    payload: Any = _json(nullable=False)
    # pending: committed, not yet published. dispatched: published. running: a worker performs it now and
    # beats ``heartbeat_at``. retrying: it failed and waits until ``next_attempt_at``. done / failed: finished.
    status: str = Field(default="pending", sa_column=Column(String(16), nullable=False))
    attempts: int = 0
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime = _when()
    dispatched_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    done_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    heartbeat_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    next_attempt_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))

    @property
    def idempotency_key(self) -> str:
        return f"{self.tenant}:effect:{self.id}"


class Failure(SQLModel, table=True):
    __tablename__ = "garrison_failures"
    __table_args__ = (
        Index("ix_garrison_failures_key", "tenant", "key", "status"),
        Index("ix_garrison_failures_status", "tenant", "status", "created_at"),
    )

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    tenant: str = Field(sa_column=Column(String(64), nullable=False))
    automation: str = Field(sa_column=Column(String(255), nullable=False))
    key: str = Field(sa_column=Column(String(255), nullable=False))
    event_id: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    seq: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    message: str = Field(sa_column=Column(String(255), nullable=False))
    error_type: str = Field(sa_column=Column(String(255), nullable=False))
    error: str = Field(sa_column=Column(Text, nullable=False))
    traceback: str = Field(default="", sa_column=Column(Text, nullable=False))
    # failed: waiting for a retry. retried: a retry event was ingested (retry_event_id).
    status: str = Field(default="failed", sa_column=Column(String(16), nullable=False))
    retry_event_id: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    created_at: datetime = _when()


class Timer(SQLModel, table=True):
    __tablename__ = "garrison_timers"
    __table_args__ = (
        UniqueConstraint("tenant", "automation", "key", "name", name="uq_garrison_timers_name"),
        Index("ix_garrison_timers_due", "tenant", "status", "due_at"),
    )

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    tenant: str = Field(sa_column=Column(String(64), nullable=False))
    automation: str = Field(sa_column=Column(String(255), nullable=False))
    key: str = Field(sa_column=Column(String(255), nullable=False))
    name: str = Field(sa_column=Column(String(255), nullable=False))
    due_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    # pending: waiting for its time. fired: claimed, its event ingested. cancelled: by an UPDATE.
    status: str = Field(default="pending", sa_column=Column(String(16), nullable=False))
    data: Any = _json(nullable=False)
    # Set when an ETA task was published for it (due within the horizon); NULL: SQL only, for now.
    published_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    fired_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    created_at: datetime = _when()


class Run(SQLModel, table=True):
    __tablename__ = "garrison_runs"
    __table_args__ = (
        UniqueConstraint("tenant", "automation", "key", "number", name="uq_garrison_runs_number"),
        Index("ix_garrison_runs_status", "tenant", "status", "automation"),
        # Retention: ended runs by age, and whether a key has a live run (whose look-back keeps its events).
        Index("ix_garrison_runs_ended", "tenant", "status", "ended_at"),
        Index("ix_garrison_runs_key", "tenant", "key", "status"),
    )

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    tenant: str = Field(sa_column=Column(String(64), nullable=False))
    automation: str = Field(sa_column=Column(String(255), nullable=False))
    key: str = Field(sa_column=Column(String(255), nullable=False))
    number: int = Field(sa_column=Column(Integer, nullable=False))
    # running / waiting / sleeping / stepping / completed / failed / cancelled
    status: str = Field(sa_column=Column(String(16), nullable=False))
    trigger: Any = _json()
    waiting: Any = _json()
    history: Any = _json()
    log: Any = _json()
    result: Any = _json()
    error: Any = _json()
    started_at: datetime = _when()
    updated_at: datetime = _when()
    ended_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))


def _table(model: type[SQLModel]) -> Table:
    return cast(Table, model.__table__)  # type: ignore[attr-defined]


# Core tables, for the bulk statements of ingest and the engine (no per-row model objects there).
EVENTS = _table(Event)
STREAMS = _table(Stream)
CURSORS = _table(Cursor)
ENTITIES = _table(Entity)
VERSIONS = _table(StateVersion)
EFFECTS = _table(Effect)
FAILURES = _table(Failure)
TIMERS = _table(Timer)
RUNS = _table(Run)
