"""Durable timers (ARCHITECTURE 3, guarantee 5).

A timer is a row in ``garrison_timers``, written by the engine in the transaction of the state change
that set it. One due within ``timer_horizon`` is also published as an ETA task (``garrison.timers``)
right after that commit; one further out stays in SQL until the relay promotes it, so no worker holds
far-future timers in memory. Firing *claims* due rows (``pending -> fired``, ``FOR UPDATE SKIP LOCKED``
on PostgreSQL) and ingests one ``garrison/timer`` event per timer in the same transaction: a duplicated
ETA message, a second worker or the relay find nothing left to claim, and the event is applied exactly
once by the engine like any other. Cancelling is an UPDATE (``pending -> cancelled``), never a revoke.

ETA tasks are bucketed to the next :data:`BUCKET` boundary, and one task fires every due timer of its
tenant (not only its own), so 10,000 timers due in the same second cost a handful of messages.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, select, update

from garrison.core.db import Database
from garrison.core.ingest import EventIn, IngestedEvent, write_events
from garrison.core.namespace import reserved
from garrison.models import TIMERS

TIMER_EVENT = "garrison/timer"
BUCKET = timedelta(milliseconds=100)
# A bucket's ETA task already published by this process is not published again while it is at least
# this far ahead: when it runs it fires every timer of the tenant due by then, committed before or after.
ETA_MARGIN = 0.5

__all__ = [
    "BUCKET", "TIMER_EVENT", "TimerBuckets", "eta_bucket", "eta_buckets", "fire_due", "overdue", "promote",
    "timer_tenants",
]


def eta_bucket(due: datetime) -> datetime:
    """``due`` rounded up to the next :data:`BUCKET` boundary: when its ETA task runs."""
    step = BUCKET.total_seconds()
    return datetime.fromtimestamp(math.ceil(round(due.timestamp() / step, 6)) * step, UTC)


def eta_buckets(dues: Iterable[datetime]) -> list[datetime]:
    return sorted({eta_bucket(d) for d in dues})


class TimerBuckets:
    """The ETA buckets one process has published ``garrison.timers`` tasks for. Keeps 10,000 timers set by
    100 batches for the same few seconds from becoming thousands of ETA messages. Owned by the client
    (one per worker process), thread-safe."""

    def __init__(self) -> None:
        self._published: dict[tuple[str, datetime], None] = {}
        self._lock = threading.Lock()

    def fresh(self, tenant: str, dues: Sequence[datetime], now: datetime) -> list[datetime]:
        """The buckets of ``dues`` not published yet (or too close to trust a task published earlier),
        remembered as published from now on."""
        horizon = now + timedelta(seconds=ETA_MARGIN)
        fresh: list[datetime] = []
        with self._lock:
            for key in [k for k in self._published if k[1] < now]:
                del self._published[key]
            for bucket in eta_buckets(dues):
                if bucket <= horizon or (tenant, bucket) not in self._published:
                    fresh.append(bucket)
                    self._published[(tenant, bucket)] = None
        return fresh

    def forget(self, tenant: str, buckets: Sequence[datetime]) -> None:
        """Forget buckets whose publish failed, so the next batch publishes them again."""
        with self._lock:
            for bucket in buckets:
                self._published.pop((tenant, bucket), None)


def fire_due(db: Database, tenant: str, now: datetime, limit: int) -> list[IngestedEvent]:
    """Claim up to ``limit`` timers of ``tenant`` due at ``now`` and ingest their events, in one
    transaction. Returns the events written (one per timer claimed).

    Two statements: the ids are claimed first (``FOR UPDATE SKIP LOCKED``, so concurrent claims split the
    due timers), then updated by id. One ``UPDATE ... WHERE id IN (SELECT ... LIMIT ... FOR UPDATE SKIP
    LOCKED)`` lets the planner run the locking sub-select once per row on tables it has no statistics for
    (a fresh install, a bulk import): 2,000 timers took 20 s instead of 0.5 s."""
    with db.session() as s:
        ids = _claim(s, select(TIMERS.c.id).where(
            TIMERS.c.tenant == tenant, TIMERS.c.status == "pending", TIMERS.c.due_at <= now,
        ), limit)
        if not ids:
            return []
        claimed = s.execute(
            update(TIMERS)
            .where(TIMERS.c.tenant == tenant, TIMERS.c.id.in_(ids))
            .values(status="fired", fired_at=now)
            .returning(TIMERS.c.id, TIMERS.c.automation, TIMERS.c.key, TIMERS.c.name, TIMERS.c.data, TIMERS.c.due_at)
        ).all()
        events = [
            EventIn(
                tenant=tenant, name=TIMER_EVENT, key=row.key,
                data={**(row.data or {}), "timer": row.name},
                idempotency_key=reserved("timer", row.id), target=row.automation, system=True,
            )
            for row in sorted(claimed, key=lambda r: r.id)
        ]
        return write_events(s, db, events, now)


def promote(db: Database, tenant: str, now: datetime, horizon: float, limit: int) -> list[datetime]:
    """Mark timers that came within the horizon as published; returns their due times (for ETA tasks).
    Claims ids first, then updates by id, as :func:`fire_due` does."""
    with db.session() as s:
        ids = _claim(s, select(TIMERS.c.id).where(
            TIMERS.c.tenant == tenant, TIMERS.c.status == "pending", TIMERS.c.published_at.is_(None),
            TIMERS.c.due_at <= now + timedelta(seconds=horizon),
        ), limit)
        if not ids:
            return []
        rows = s.execute(
            update(TIMERS)
            .where(TIMERS.c.tenant == tenant, TIMERS.c.id.in_(ids))
            .values(published_at=now)
            .returning(TIMERS.c.due_at)
        ).scalars()
        return [_aware(d) for d in rows]


def _claim(s: Any, query: Select[tuple[int]], limit: int) -> list[int]:
    """The ids of up to ``limit`` rows of ``query`` (earliest due first), locked for this transaction;
    rows another transaction holds are skipped (on SQLite the transaction already holds the database)."""
    return list(s.execute(query.order_by(TIMERS.c.due_at).limit(limit).with_for_update(skip_locked=True)).scalars())


def overdue(db: Database, tenant: str, before: datetime) -> bool:
    """Whether a pending timer of ``tenant`` was due before ``before`` (its ETA message was lost, or no
    worker ran when it came due)."""
    with db.session() as s:
        return s.execute(
            select(TIMERS.c.id)
            .where(TIMERS.c.tenant == tenant, TIMERS.c.status == "pending", TIMERS.c.due_at < before)
            .limit(1)
        ).first() is not None


def timer_tenants(db: Database) -> set[str]:
    """Tenants with pending timers (the relay's one cross-tenant read: names only)."""
    with db.session() as s:
        return set(s.execute(select(TIMERS.c.tenant).where(TIMERS.c.status == "pending").distinct()).scalars())


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
