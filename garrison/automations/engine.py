"""The engine: applies pending messages to entities, one key at a time under that key's lock.

For a batch of keys, in ONE transaction: lock the keys' cursor rows (in key order, so concurrent
batches cannot deadlock; on SQLite ``BEGIN IMMEDIATE`` already serializes writers), read the
messages after each cursor in sequence order, run every automation that takes each message, and write
entity states, state versions, effects, failures and the new cursors. Nothing here knows the broker:
committed effect ids are handed back for the caller to dispatch.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, bindparam, func, insert, select, update

from garrison.automations.base import JSON, ApplyContext, Message
from garrison.automations.registry import Registry
from garrison.clock import Clock, as_utc
from garrison.config import Settings
from garrison.db import Database
from garrison.models import CURSORS, EFFECTS, ENTITIES, EVENTS, FAILURES, STREAMS, VERSIONS

log = logging.getLogger("garrison.engine")

__all__ = ["CURSORS", "EFFECTS", "ENTITIES", "EVENTS", "FAILURES", "STREAMS", "VERSIONS", "BatchResult", "Engine"]


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
    truncated: bool = False


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
                select(
                    EVENTS.c.id, EVENTS.c.key, EVENTS.c.seq, EVENTS.c.name, EVENTS.c.data,
                    EVENTS.c.target, EVENTS.c.created_at, EVENTS.c.system,
                )
                .join(CURSORS, and_(CURSORS.c.tenant == EVENTS.c.tenant, CURSORS.c.key == EVENTS.c.key))
                .where(EVENTS.c.tenant == tenant, CURSORS.c.key.in_(keys), EVENTS.c.seq > CURSORS.c.processed_seq)
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
            last_seq: dict[str, int] = {}
            for row in rows:
                message = Message(
                    tenant=tenant, key=row.key, seq=row.seq, event_id=row.id, name=row.name,
                    data=row.data, target=row.target, created_at=as_utc(row.created_at), system=row.system,
                )
                last_seq[row.key] = row.seq
                for automation in self.registry.route(message):
                    slot = slots.setdefault((automation.name, row.key), _Slot(None, 0, 0))
                    slot.cursor = row.seq
                    slot.dirty = True
                    result.applied += 1
                    try:
                        outcome = automation.apply(
                            slot.state,
                            message,
                            ApplyContext(tenant=tenant, key=row.key, now=message.created_at, version=slot.version),
                        )
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
            self._write(s, tenant, now, slots, versions, effects, failures, last_seq, result)
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
        entity_rows = [
            {"tenant": tenant, "key": key, "automation": name, "state": slot.state, "version": slot.version,
             "cursor": slot.cursor, "created_at": now, "updated_at": now}
            for (name, key), slot in slots.items()
            if slot.dirty
        ]
        if entity_rows:
            self.db.execute_upsert(
                s, ENTITIES, entity_rows, ["tenant", "key", "automation"],
                update={
                    "state": lambda ex: ex.state, "version": lambda ex: ex.version,
                    "cursor": lambda ex: ex.cursor, "updated_at": lambda ex: ex.updated_at,
                },
            )
        if versions:
            s.execute(insert(VERSIONS), versions)
        if failures:
            s.execute(insert(FAILURES), failures)
        if effects:
            result.effect_ids = list(
                s.execute(insert(EFFECTS).returning(EFFECTS.c.id, sort_by_parameter_order=True), effects).scalars()
            )
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


def pending_keys(tenant: str) -> Select[tuple[str]]:
    """Keys of a tenant with messages committed but not yet applied (stream ahead of cursor)."""
    return (
        select(STREAMS.c.key)
        .outerjoin(CURSORS, and_(CURSORS.c.tenant == STREAMS.c.tenant, CURSORS.c.key == STREAMS.c.key))
        .where(STREAMS.c.tenant == tenant, STREAMS.c.last_seq > processed_seq())
    )


def processed_seq() -> ColumnElement[int]:
    return func.coalesce(CURSORS.c.processed_seq, 0)
