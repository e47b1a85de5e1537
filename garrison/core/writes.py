"""What an engine batch writes, in its one transaction: entities, state versions, failures, effects,
cursors, and the timers, emitted events and journey runs its outcomes asked for.

On PostgreSQL each bulk statement carries its rows as one JSON document (:mod:`garrison.core.pgbulk`);
elsewhere the portable statements. Every statement is scoped by the batch's tenant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, insert, update

from garrison.core import feed, pgbulk
from garrison.core.batch import Slot, Written
from garrison.core.contract import Outcome
from garrison.core.db import Database
from garrison.core.ingest import EventIn, write_events
from garrison.core.publisher import EffectAbout
from garrison.models import CURSORS, EFFECTS, ENTITIES, FAILURES, RUNS, TIMERS, VERSIONS

__all__ = ["Extras", "WriteResult", "effect_labels", "write_batch"]


@dataclass(slots=True)
class WriteResult:
    """What the caller dispatches after commit."""

    effect_ids: list[int] = field(default_factory=list)
    # What each effect is about: its automation's queue, and the task's readable arguments in Flower.
    effect_labels: dict[int, EffectAbout] = field(default_factory=dict)
    # Due times of timers set within the horizon (to publish as ETA tasks), keys that were sent events.
    timer_dues: list[datetime] = field(default_factory=list)
    woken: set[str] = field(default_factory=set)


def effect_labels(ids: Sequence[int], rows: Sequence[Any]) -> dict[int, EffectAbout]:
    """``{effect id: (automation, key)}`` for rows (mappings or rows) in the order of ``ids``."""
    return {i: EffectAbout(r["automation"], r["key"]) if isinstance(r, dict) else EffectAbout(r.automation, r.key)
            for i, r in zip(ids, rows, strict=True)}


def write_batch(
    s: Any, db: Database, tenant: str, now: datetime, horizon: float, slots: dict[tuple[str, str], Slot],
    written: Written, cursors: dict[str, int],
) -> WriteResult:
    """Store a batch; ``cursors`` are the keys whose cursor moved, with their new position."""
    result = WriteResult()
    pg = db.dialect == "postgresql"
    dirty = [(name, key, slot) for (name, key), slot in slots.items() if slot.dirty]
    if dirty and pg:
        pgbulk.entities_upsert(
            s, tenant,
            [{"k": k, "a": a, "s": sl.state, "v": sl.version, "c": sl.cursor, "st": sl.status} for a, k, sl in dirty],
            now,
        )
    elif dirty:
        db.execute_upsert(
            s, ENTITIES,
            [{"tenant": tenant, "key": k, "automation": a, "state": sl.state, "version": sl.version,
              "cursor": sl.cursor, "status": sl.status, "created_at": now, "updated_at": now}
             for a, k, sl in dirty],
            ["tenant", "key", "automation"],
            update={c: (lambda ex, c=c: getattr(ex, c))
                    for c in ("state", "version", "cursor", "status", "updated_at")},
        )
    if written.versions and pg:
        pgbulk.versions_insert(s, tenant, written.versions, now)
    elif written.versions:
        txid = feed.sqlite_txid(s, tenant)
        s.execute(insert(VERSIONS), [{**v, "txid": txid} for v in written.versions])
    if written.versions:
        feed.notify(s, db, tenant)
    if written.failures:
        s.execute(insert(FAILURES), written.failures)
    if written.effects:
        # Effects need their ids back in order: insertmanyvalues with RETURNING keeps it.
        result.effect_ids = list(
            s.execute(insert(EFFECTS).returning(EFFECTS.c.id, sort_by_parameter_order=True), written.effects).scalars()
        )
        result.effect_labels = effect_labels(result.effect_ids, written.effects)
    if cursors and pg:
        pgbulk.cursors_update(s, tenant, cursors, now)
    elif cursors:
        s.execute(
            update(CURSORS)
            .where(CURSORS.c.tenant == tenant, CURSORS.c.key == bindparam("k"))
            .values(processed_seq=bindparam("seq"), updated_at=now),
            [{"k": k, "seq": seq} for k, seq in cursors.items()],
        )
    extras = Extras()
    for automation, key, outcome in written.outcomes:
        extras.add(tenant, automation, key, outcome, now)
    extras.write(s, db, tenant, now, horizon, result)
    return result


@dataclass(slots=True)
class Extras:
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

    def write(self, s: Any, db: Database, tenant: str, now: datetime, horizon: float, result: WriteResult) -> None:
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
