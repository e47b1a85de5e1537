"""The engine: applies pending messages to entities, one key at a time under that key's lock.

For a batch of keys, in ONE transaction: lock the keys' cursor rows (in key order, so concurrent
batches cannot deadlock; on SQLite ``BEGIN IMMEDIATE`` already serializes writers), read the
messages after each cursor in sequence order, run every automation that takes each message, and write
entity states, state versions, effects, failures and the new cursors. Nothing here knows the broker:
committed effect ids are handed back for the caller to dispatch.
"""

from __future__ import annotations

import fnmatch
import logging
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, bindparam, func, insert, select, update

from garrison.clock import Clock, as_utc
from garrison.config import Settings
from garrison.core import pgbulk
from garrison.core.contract import ApplyContext, Message, Outcome, check_outcome
from garrison.core.db import Database
from garrison.core.ingest import EventIn, write_events
from garrison.core.jsondata import JSON
from garrison.core.registry import Registry
from garrison.logs import log_context
from garrison.models import CURSORS, EFFECTS, ENTITIES, EVENTS, FAILURES, RUNS, STREAMS, TIMERS, VERSIONS

log = logging.getLogger("garrison.engine")

__all__ = [
    "EVENT_COLUMNS", "BatchResult", "Engine", "effect_labels", "lookup_in", "pending_keys", "processed_seq",
    "reader_in", "to_message",
]

EVENT_COLUMNS = (
    EVENTS.c.id, EVENTS.c.key, EVENTS.c.seq, EVENTS.c.name, EVENTS.c.data,
    EVENTS.c.target, EVENTS.c.created_at, EVENTS.c.system, EVENTS.c.idempotency_key,
)


def to_message(tenant: str, row: Any) -> Message:
    return Message(
        tenant=tenant, key=row.key, seq=row.seq, event_id=row.id, name=row.name, data=row.data,
        target=row.target, created_at=as_utc(row.created_at), system=row.system,
        idempotency_key=getattr(row, "idempotency_key", None),
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


def effect_labels(ids: Sequence[int], rows: Sequence[Any]) -> dict[int, str]:
    """``{effect id: "automation key=KEY"}`` for rows (mappings or rows) in the order of ``ids``."""
    return {i: f"{r['automation']} key={r['key']}" if isinstance(r, dict) else f"{r.automation} key={r.key}"
            for i, r in zip(ids, rows, strict=True)}


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
class _Slot:
    state: JSON
    version: int
    cursor: int
    dirty: bool = False


@dataclass(slots=True)
class BatchResult:
    """What one engine transaction did."""

    tenant: str
    messages: int = 0
    applied: int = 0
    changed: int = 0
    failed: int = 0
    effect_ids: list[int] = field(default_factory=list)
    # What each effect is about, for the task's readable arguments in Flower: "automation key=KEY".
    effect_labels: dict[int, str] = field(default_factory=dict)
    truncated: bool = False
    # Due times of timers set within the horizon (to publish as ETA tasks), keys that were sent events.
    timer_dues: list[datetime] = field(default_factory=list)
    woken: set[str] = field(default_factory=set)


class Engine:
    """Applies messages. Takes a database, the registry, a clock and the settings; no broker."""

    def __init__(self, db: Database, registry: Registry, clock: Clock, settings: Settings) -> None:
        self.db = db
        self.registry = registry
        self.clock = clock
        self.settings = settings

    def process(self, tenant: str, keys: Iterable[str]) -> BatchResult:
        """Apply every pending message of ``keys`` (up to ``engine_batch``) in one transaction."""
        keys = sorted(set(keys))
        result = BatchResult(tenant=tenant)
        if not keys:
            return result
        now = self.clock.now()
        with self.db.session() as s:
            if self.db.dialect == "postgresql":
                pgbulk.cursors_init(s, tenant, keys, now)
            else:
                self.db.execute_upsert(
                    s,
                    CURSORS,
                    [{"tenant": tenant, "key": k, "processed_seq": 0, "updated_at": now} for k in keys],
                    ["tenant", "key"],
                )
            # The per-key lock (guarantee 3): held until this transaction ends.
            s.execute(
                select(CURSORS.c.key)
                .where(CURSORS.c.tenant == tenant, CURSORS.c.key.in_(keys))
                .order_by(CURSORS.c.key)
                .with_for_update()
            ).all()
            rows = s.execute(
                select(*EVENT_COLUMNS)
                .join(CURSORS, and_(CURSORS.c.tenant == EVENTS.c.tenant, CURSORS.c.key == EVENTS.c.key))
                .where(
                    # The key filter on both sides keeps the plan an index lookup per key even before
                    # PostgreSQL has statistics (a fresh table otherwise gets a quadratic nested loop).
                    EVENTS.c.tenant == tenant, EVENTS.c.key.in_(keys), CURSORS.c.key.in_(keys),
                    EVENTS.c.seq > CURSORS.c.processed_seq,
                )
                .order_by(EVENTS.c.key, EVENTS.c.seq)
                .limit(self.settings.engine_batch)
            ).all()
            if not rows:
                return result
            result.messages = len(rows)
            result.truncated = len(rows) >= self.settings.engine_batch
            touched = sorted({r.key for r in rows})
            slots = self._load(s, tenant, touched)
            versions: list[dict[str, Any]] = []
            effects: list[dict[str, Any]] = []
            failures: list[dict[str, Any]] = []
            extras = _Extras()
            reader = reader_in(s, tenant)
            last_seq: dict[str, int] = {}
            for row in rows:
                message = to_message(tenant, row)
                last_seq[row.key] = row.seq
                for automation in self.registry.route(message):
                    slot = slots.setdefault((automation.name, row.key), _Slot(None, 0, 0))
                    result.applied += 1
                    if slot.version:
                        slot.cursor = row.seq
                        slot.dirty = True
                    try:
                        with log_context(automation=automation.name, key=row.key, event_id=row.id):
                            outcome = automation.apply(
                                slot.state,
                                message,
                                ApplyContext(
                                    tenant=tenant, key=row.key, now=message.created_at, version=slot.version,
                                    lookup=lookup_in(s, tenant, row.key),
                                    max_payload_bytes=self.settings.max_payload_bytes,
                                    max_nesting=self.settings.max_nesting,
                                    read=reader,
                                ),
                            )
                            check_outcome(outcome, self.settings.max_nesting)
                    except Exception as exc:  # noqa: BLE001 - a handler's error is data (guarantee 7)
                        result.failed += 1
                        log.warning(
                            "handler failed",
                            extra={"tenant": tenant, "automation": automation.name, "key": row.key,
                                   "event_id": row.id, "error": repr(exc)},
                        )
                        failures.append({
                            "tenant": tenant, "automation": automation.name, "key": row.key,
                            "event_id": row.id, "seq": row.seq, "message": row.name,
                            "error_type": type(exc).__name__, "error": str(exc) or repr(exc),
                            "traceback": traceback.format_exc(), "status": "failed", "created_at": now,
                        })
                        continue
                    if outcome.changed or outcome.effects:
                        # A new entity is written only when a message did something to it: a journey
                        # that sees every event of a key it never ran for leaves no row behind.
                        slot.cursor = row.seq
                        slot.dirty = True
                    if outcome.changed:
                        result.changed += 1
                        slot.version += 1
                        slot.state = outcome.state
                        versions.append({
                            "tenant": tenant, "key": row.key, "automation": automation.name,
                            "version": slot.version, "state": outcome.state, "message": outcome.label,
                            "data": row.data, "event_id": row.id, "seq": row.seq, "created_at": now,
                        })
                    for spec in outcome.effects:
                        effects.append({
                            "tenant": tenant, "automation": automation.name, "key": row.key,
                            "kind": spec.kind, "payload": {**spec.payload, "version": slot.version},
                            "status": "pending", "attempts": 0, "created_at": now,
                        })
                    extras.add(tenant, automation.name, row.key, outcome, now)
            self._write(s, tenant, now, slots, versions, effects, failures, last_seq, result)
            extras.write(s, self.db, tenant, now, self.settings.timer_horizon, result)
        return result

    def _load(self, s: Any, tenant: str, keys: Sequence[str]) -> dict[tuple[str, str], _Slot]:
        rows = s.execute(
            select(ENTITIES.c.automation, ENTITIES.c.key, ENTITIES.c.state, ENTITIES.c.version, ENTITIES.c.cursor)
            .where(ENTITIES.c.tenant == tenant, ENTITIES.c.key.in_(keys))
        ).all()
        return {(r.automation, r.key): _Slot(r.state, r.version, r.cursor) for r in rows}

    def _write(
        self,
        s: Any,
        tenant: str,
        now: Any,
        slots: dict[tuple[str, str], _Slot],
        versions: list[dict[str, Any]],
        effects: list[dict[str, Any]],
        failures: list[dict[str, Any]],
        last_seq: dict[str, int],
        result: BatchResult,
    ) -> None:
        """Store the batch: entities, versions, failures, effects, cursors. On PostgreSQL each bulk
        statement is one JSON document (:mod:`garrison.core.pgbulk`); elsewhere the portable statements."""
        pg = self.db.dialect == "postgresql"
        dirty = [(name, key, slot) for (name, key), slot in slots.items() if slot.dirty]
        if dirty and pg:
            pgbulk.entities_upsert(
                s, tenant, [{"k": k, "a": a, "s": sl.state, "v": sl.version, "c": sl.cursor} for a, k, sl in dirty], now
            )
        elif dirty:
            self.db.execute_upsert(
                s, ENTITIES,
                [{"tenant": tenant, "key": k, "automation": a, "state": sl.state, "version": sl.version,
                  "cursor": sl.cursor, "created_at": now, "updated_at": now} for a, k, sl in dirty],
                ["tenant", "key", "automation"],
                update={
                    "state": lambda ex: ex.state, "version": lambda ex: ex.version,
                    "cursor": lambda ex: ex.cursor, "updated_at": lambda ex: ex.updated_at,
                },
            )
        if versions and pg:
            pgbulk.versions_insert(s, tenant, versions, now)
        elif versions:
            s.execute(insert(VERSIONS), versions)
        if failures:
            s.execute(insert(FAILURES), failures)
        if effects:
            # Effects need their ids back in order: insertmanyvalues with RETURNING keeps it.
            result.effect_ids = list(
                s.execute(insert(EFFECTS).returning(EFFECTS.c.id, sort_by_parameter_order=True), effects).scalars()
            )
            result.effect_labels = effect_labels(result.effect_ids, effects)
        if pg:
            pgbulk.cursors_update(s, tenant, last_seq, now)
        else:
            s.execute(
                update(CURSORS)
                .where(CURSORS.c.tenant == tenant, CURSORS.c.key == bindparam("k"))
                .values(processed_seq=bindparam("seq"), updated_at=now),
                [{"k": k, "seq": seq} for k, seq in last_seq.items()],
            )

    def pending(self, tenant: str, keys: Iterable[str]) -> list[str]:
        """Which of ``keys`` have messages committed but not yet applied."""
        keys = sorted(set(keys))
        if not keys:
            return []
        with self.db.session() as s:
            return list(s.execute(pending_keys(tenant).where(STREAMS.c.key.in_(keys))).scalars())


@dataclass(slots=True)
class _Extras:
    """Timers, emitted events and journey runs collected over a batch, written before commit."""

    timers: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    cancels: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    emits: list[EventIn] = field(default_factory=list)
    runs: dict[tuple[str, str, int], dict[str, Any]] = field(default_factory=dict)

    def add(self, tenant: str, automation: str, key: str, outcome: Outcome, now: datetime) -> None:
        for t in outcome.timers:
            self.timers[(automation, key, t.name)] = {
                "tenant": tenant, "automation": automation, "key": key, "name": t.name,
                "due_at": t.due_at, "status": "pending", "data": t.data, "created_at": now,
            }
        for name in outcome.cancel_timers:
            if self.timers.pop((automation, key, name), None) is None:
                self.cancels.setdefault((automation, key), set()).add(name)
        for e in outcome.emits:
            self.emits.append(EventIn(
                tenant=tenant, name=e.name, key=e.key, data=e.data, idempotency_key=e.idempotency_key,
                target=e.target, system=e.system,
            ))
        for run in outcome.runs:
            self.runs[(automation, key, run["number"])] = {
                **run, "tenant": tenant, "automation": automation, "key": key, "updated_at": now,
            }

    def write(self, s: Any, db: Database, tenant: str, now: datetime, horizon: float, result: BatchResult) -> None:
        if self.timers:
            within = now + timedelta(seconds=horizon)
            rows = []
            for row in self.timers.values():
                if row["due_at"] <= within:
                    row["published_at"] = now
                    result.timer_dues.append(row["due_at"])
                else:
                    row["published_at"] = None
                rows.append(row)
            db.execute_upsert(s, TIMERS, rows, ["tenant", "automation", "key", "name"])
        for (automation, key), names in self.cancels.items():
            s.execute(
                update(TIMERS)
                .where(
                    TIMERS.c.tenant == tenant, TIMERS.c.automation == automation, TIMERS.c.key == key,
                    TIMERS.c.name.in_(sorted(names)), TIMERS.c.status == "pending",
                )
                .values(status="cancelled")
            )
        if self.runs:
            db.execute_upsert(
                s, RUNS, list(self.runs.values()), ["tenant", "automation", "key", "number"],
                update={
                    c: (lambda ex, c=c: getattr(ex, c))
                    for c in ("status", "waiting", "history", "log", "result", "error", "updated_at", "ended_at")
                },
            )
        if self.emits:
            written = write_events(s, db, self.emits, now)
            result.woken.update(e.key for e in written if not e.duplicate)


def pending_keys(tenant: str) -> Select[tuple[str]]:
    """Keys of a tenant with messages committed but not yet applied (stream ahead of cursor)."""
    return (
        select(STREAMS.c.key)
        .outerjoin(CURSORS, and_(CURSORS.c.tenant == STREAMS.c.tenant, CURSORS.c.key == STREAMS.c.key))
        .where(STREAMS.c.tenant == tenant, STREAMS.c.last_seq > processed_seq())
    )


def processed_seq() -> ColumnElement[int]:
    return func.coalesce(CURSORS.c.processed_seq, 0)
