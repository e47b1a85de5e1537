"""The engine: applies pending messages to entities, one key at a time under that key's lock.

For a batch of keys, in ONE transaction: lock the keys' cursor rows (in key order, so concurrent
batches cannot deadlock; on SQLite ``BEGIN IMMEDIATE`` already serializes writers), claim other pending
keys no other worker holds, read the messages after each cursor in sequence order (and those an entity
behind its key still waits for), apply them (:mod:`garrison.core.batch`), write entity states, state
versions, effects, failures and the new cursors (:mod:`garrison.core.writes`), and settle the keys'
pending rows. Nothing here knows the broker: committed effect ids are handed back for the caller to
dispatch.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, select, text

from garrison.clock import Clock, as_utc
from garrison.config import Settings
from garrison.core import fleet, pgbulk
from garrison.core.batch import BEHIND, Batch, Slot, units_of
from garrison.core.contract import ApplyContext, Message
from garrison.core.db import Database
from garrison.core.publisher import EffectAbout
from garrison.core.registry import Registry
from garrison.core.writes import write_batch
from garrison.models import CURSORS, ENTITIES, EVENTS

__all__ = ["EVENT_COLUMNS", "BatchResult", "Engine", "lookup_in", "processed_seq", "reader_in", "to_message"]

EVENT_COLUMNS = (
    EVENTS.c.id, EVENTS.c.key, EVENTS.c.seq, EVENTS.c.name, EVENTS.c.data,
    EVENTS.c.target, EVENTS.c.created_at, EVENTS.c.system, EVENTS.c.idempotency_key, EVENTS.c.trace,
)


def to_message(tenant: str, row: Any) -> Message:
    return Message(
        tenant=tenant, key=row.key, seq=row.seq, event_id=row.id, name=row.name, data=row.data,
        target=row.target, created_at=as_utc(row.created_at), system=row.system,
        idempotency_key=getattr(row, "idempotency_key", None), trace=getattr(row, "trace", None),
    )


def lookup_in(session: Any, tenant: str, key: str) -> Any:
    """A :data:`~garrison.core.contract.Lookup` reading the key's log through ``session``."""

    def lookup(name: str | None, after: int, before: int) -> list[Message]:
        if before - after <= 1:
            return []
        query = select(*EVENT_COLUMNS).where(
            EVENTS.c.tenant == tenant, EVENTS.c.key == key, EVENTS.c.seq > after, EVENTS.c.seq < before,
            EVENTS.c.target.is_(None),
        )
        if name is not None and not any(ch in name for ch in "*?["):
            query = query.where(EVENTS.c.name == name)
        messages = [to_message(tenant, r) for r in session.execute(query.order_by(EVENTS.c.seq))]
        if name is not None and any(ch in name for ch in "*?["):
            messages = [m for m in messages if fnmatch.fnmatchcase(m.name, name)]
        return messages

    return lookup


def reader_in(session: Any, tenant: str) -> Any:
    """A :data:`~garrison.core.contract.Reader` on ``session``: other entities' stored states."""

    def read(automation: str, keys: Sequence[str]) -> dict[str, tuple[Any, int]]:
        if not keys:
            return {}
        rows = session.execute(
            select(ENTITIES.c.key, ENTITIES.c.state, ENTITIES.c.version).where(
                ENTITIES.c.tenant == tenant, ENTITIES.c.automation == automation,
                ENTITIES.c.key.in_(sorted(set(keys))), ENTITIES.c.version > 0,
            )
        )
        return {r.key: (r.state, r.version) for r in rows}

    return read


@dataclass(slots=True)
class BatchResult:
    """What one engine transaction did."""

    tenant: str
    messages: int = 0
    applied: int = 0
    changed: int = 0
    failed: int = 0
    effect_ids: list[int] = field(default_factory=list)
    # What each effect is about: its automation's queue, and the task's readable arguments in Flower.
    effect_labels: dict[int, EffectAbout] = field(default_factory=dict)
    truncated: bool = False
    # Due times of timers set within the horizon (to publish as ETA tasks), keys that were sent events.
    timer_dues: list[datetime] = field(default_factory=list)
    woken: set[str] = field(default_factory=set)
    # The keys this transaction held (its own and those it claimed); those of them this process should
    # go on with (more messages than one read, an entity catching up, or events ingested meanwhile); and
    # keys that now wait for an automation this process lacks: ``{key: automation}`` (to publish to that
    # automation's queue).
    keys: list[str] = field(default_factory=list)
    again: set[str] = field(default_factory=set)
    needs: dict[str, str] = field(default_factory=dict)


class Engine:
    """Applies messages. Takes a database, the registry, a clock and the settings; no broker."""

    def __init__(self, db: Database, registry: Registry, clock: Clock, settings: Settings) -> None:
        self.db = db
        self.registry = registry
        self.clock = clock
        self.settings = settings

    def process(self, tenant: str, keys: Iterable[str], *, claim: int = 0) -> BatchResult:
        """Apply every pending message of ``keys`` (up to ``engine_batch``) in one transaction, with up to
        ``claim`` other pending keys of the tenant that no other worker holds."""
        keys = sorted(set(keys))
        result = BatchResult(tenant=tenant)
        if not keys and not claim:
            return result
        now = self.clock.now()
        with self.db.session() as s:
            cursors = self._lock(s, tenant, keys, now)
            if claim:
                cursors.update(fleet.claim(s, self.db, tenant, set(keys), claim))
            if not cursors:
                return result
            locked = sorted(cursors)
            result.keys = locked
            slots = self._load(s, tenant, locked)
            rows = self._read(s, tenant, locked)
            result.truncated = len(rows) >= self.settings.engine_batch
            if result.truncated and rows[-1].batch_id is not None:
                rows += self._rest_of_batch(s, tenant, rows[-1])
            catch_up = self._read_behind(s, tenant, slots, cursors)
            # After the messages: an automation registered before any of them was committed is seen here.
            remote = fleet.remote_routes(s, self.registry, now, self.settings.automation_ttl)
            reader = reader_in(s, tenant)

            def context(message: Message, version: int) -> ApplyContext:
                # ``now`` is when the message was ingested, so a replay sees the same time.
                return ApplyContext(
                    tenant=tenant, key=message.key, now=message.created_at, version=version,
                    lookup=lookup_in(s, tenant, message.key), max_payload_bytes=self.settings.max_payload_bytes,
                    max_nesting=self.settings.max_nesting, read=reader,
                )

            batch = Batch(tenant, now, self.registry, remote, slots, cursors, context, self.settings.max_nesting)
            units, cut = units_of([*catch_up, *[(to_message(tenant, r), r.data, r.batch_id, r.batch_size)
                                                for r in rows]])
            for unit in units:
                batch.apply(unit)
            batch.settle()
            result.messages = sum(len(u.messages) for u in units)
            result.applied, result.changed, result.failed = batch.out.applied, batch.out.changed, batch.out.failed
            moved = {k: q for k, q in batch.cursors.items() if q != cursors[k]}
            written = write_batch(s, self.db, tenant, now, self.settings.timer_horizon, slots, batch.out, moved)
            if batch.out.derived_only and self.settings.engine_async_commit and self.db.dialect == "postgresql":
                # Nothing here leads outside the database: lost in a crash before the log reaches the disk,
                # the batch is applied again from the event log (whose ingest commits were durable), and
                # any later durable commit flushes it first. Saves the wait for the log flush (2-3 ms).
                s.execute(text("SET LOCAL synchronous_commit = off"))
            result.effect_ids, result.effect_labels = written.effect_ids, written.effect_labels
            result.timer_dues, result.woken = written.timer_dues, written.woken
            # Keys read to their end leave the pending index, or wait for an automation this process lacks.
            unread = {r.key for r in rows[-1:]} if result.truncated else set()
            last = rows[-1].key if result.truncated else None
            done: dict[str, int] = {}
            needs: dict[str, tuple[str, int]] = {}
            for key in locked:
                if key in cut or key in unread or (last is not None and key > last) or batch.catching_up(key):
                    result.again.add(key)
                    continue
                waiting = batch.needs(key)
                if waiting is None:
                    done[key] = batch.cursors[key]
                else:
                    needs[key] = (waiting, batch.cursors[key])
            kept, fresh = fleet.settle(s, self.db, tenant, done, needs, now)
            result.again |= kept
            result.needs = {k: needs[k][0] for k in fresh}
        return result

    def _lock(self, s: Any, tenant: str, keys: Sequence[str], now: datetime) -> dict[str, int]:
        """The per-key lock (guarantee 3), held until the transaction ends: the keys' cursor rows, made
        when missing and locked in key order (so concurrent batches cannot deadlock; on SQLite
        ``BEGIN IMMEDIATE`` already serializes writers). Returns each key's cursor."""
        if not keys:
            return {}
        if self.db.dialect == "postgresql":
            return pgbulk.cursors_lock(s, tenant, keys, now)
        self.db.execute_upsert(
            s, CURSORS, [{"tenant": tenant, "key": k, "processed_seq": 0, "updated_at": now} for k in keys],
            ["tenant", "key"],
        )
        return dict(s.execute(
            select(CURSORS.c.key, CURSORS.c.processed_seq)
            .where(CURSORS.c.tenant == tenant, CURSORS.c.key.in_(keys))
            .order_by(CURSORS.c.key)
            .with_for_update()
        ).all())

    def _read(self, s: Any, tenant: str, keys: Sequence[str]) -> list[Any]:
        """The messages after each key's cursor, in key and sequence order, up to ``engine_batch``."""
        return list(s.execute(
            select(*EVENT_COLUMNS, EVENTS.c.batch_id, EVENTS.c.batch_size)
            .join(CURSORS, and_(CURSORS.c.tenant == EVENTS.c.tenant, CURSORS.c.key == EVENTS.c.key))
            .where(
                # The key filter on both sides keeps the plan an index lookup per key even before
                # PostgreSQL has statistics (a fresh table otherwise gets a quadratic nested loop).
                EVENTS.c.tenant == tenant, EVENTS.c.key.in_(keys), CURSORS.c.key.in_(keys),
                EVENTS.c.seq > CURSORS.c.processed_seq,
            )
            .order_by(EVENTS.c.key, EVENTS.c.seq)
            .limit(self.settings.engine_batch)
        ).all())

    def _rest_of_batch(self, s: Any, tenant: str, last: Any) -> list[Any]:
        """The rest of an atomic batch the read's limit cut (it applies as one, so it is read whole)."""
        return list(s.execute(
            select(*EVENT_COLUMNS, EVENTS.c.batch_id, EVENTS.c.batch_size)
            .where(EVENTS.c.tenant == tenant, EVENTS.c.key == last.key, EVENTS.c.seq > last.seq,
                   EVENTS.c.batch_id == last.batch_id)
            .order_by(EVENTS.c.seq)
        ).all())

    def _read_behind(
        self, s: Any, tenant: str, slots: dict[tuple[str, str], Slot], cursors: dict[str, int]
    ) -> list[tuple[Message, Any, int | None, int | None]]:
        """The messages that entities of this process's automations which are behind their key have not
        considered yet (rare: after a rolling deploy, or a retried halt), up to ``engine_batch``."""
        start: dict[str, int] = {}
        for (name, key), slot in slots.items():
            if slot.status == BEHIND and name in self.registry and slot.cursor < cursors[key]:
                start[key] = min(start.get(key, slot.cursor), slot.cursor)
        found: list[tuple[Message, Any, int | None, int | None]] = []
        for key, after in sorted(start.items()):
            room = self.settings.engine_batch - len(found)
            if room <= 0:
                break
            rows = s.execute(
                select(*EVENT_COLUMNS, EVENTS.c.batch_id, EVENTS.c.batch_size)
                .where(EVENTS.c.tenant == tenant, EVENTS.c.key == key, EVENTS.c.seq > after,
                       EVENTS.c.seq <= cursors[key])
                .order_by(EVENTS.c.seq).limit(room)
            )
            found += [(to_message(tenant, r), r.data, r.batch_id, r.batch_size) for r in rows]
        return found

    def _load(self, s: Any, tenant: str, keys: Sequence[str]) -> dict[tuple[str, str], Slot]:
        rows = s.execute(
            select(ENTITIES.c.automation, ENTITIES.c.key, ENTITIES.c.state, ENTITIES.c.version, ENTITIES.c.cursor,
                   ENTITIES.c.status)
            .where(ENTITIES.c.tenant == tenant, ENTITIES.c.key.in_(keys))
        ).all()
        return {(r.automation, r.key): Slot(r.state, r.version, r.cursor, r.status) for r in rows}

    def pending(self, tenant: str, keys: Iterable[str]) -> list[str]:
        """Which of ``keys`` still have work this process can do (one read of the pending index)."""
        return fleet.still_pending(self.db, tenant, keys, self.registry)


def processed_seq() -> ColumnElement[int]:
    return func.coalesce(CURSORS.c.processed_seq, 0)
