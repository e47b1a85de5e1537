"""Pulse fan-out.

A slot of a schedule is opened once (its row is unique per schedule and slot, so two beats cannot both
open it), then fanned out over the automation's entities in keyset pages. Each page is ONE transaction:
it locks the slot row, reads the next entity keys after the slot's cursor, ingests one event per entity
(the schedule's message, targeted at the automation, with the slot's time as ``now``) and advances the
cursor. A page delivered twice, or re-run after its worker died, resumes from the committed cursor, and
every event carries an idempotency key per (schedule, slot, entity): a pulse applies at most once per
entity, through the engine's usual per-key guarantees, and reaches every entity that existed at the slot.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text, update

from garrison.clock import as_utc
from garrison.core import pgbulk
from garrison.core.db import Database
from garrison.core.heartbeat import beating
from garrison.core.ingest import EventIn, IngestedEvent, write_events
from garrison.core.namespace import PREFIX, Reserved
from garrison.core.runtime import Runtime
from garrison.errors import NotFound
from garrison.logs import log_context
from garrison.models import ENTITIES
from garrison.models.pulses import PULSE_SLOTS, SCHEDULES
from garrison.pulses.schedules import PulseSchedule, state_matches

# How far before its slot the last pass of a pulse looks for entities created by a batch that committed
# while the pages ran (an engine batch lasts seconds; a longer one is reached by the next slot).
LATE_WINDOW = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class OpenedSlot:
    id: int
    status: str
    reason: str | None


def schedule_values(spec: PulseSchedule) -> dict[str, Any]:
    period = spec.period
    return {
        "automation": spec.automation, "message": spec.message, "data": dict(spec.data), "cron": spec.cron,
        "every_seconds": None if period is None else period.total_seconds(), "timezone": spec.timezone,
        "where": None if spec.where is None else dict(spec.where), "missed": spec.missed,
        "missed_limit": spec.missed_limit, "overlap": spec.overlap, "grace": spec.grace,
    }


def spec_of(row: Any) -> PulseSchedule:
    return PulseSchedule(
        name=row.name, automation=row.automation, message=row.message, cron=row.cron,
        every=None if row.every_seconds is None else timedelta(seconds=row.every_seconds),
        timezone=row.timezone, data=row.data or {}, where=row.where, missed=row.missed,
        missed_limit=row.missed_limit, overlap=row.overlap, grace=row.grace,
    )


def save_schedule(db: Database, tenant: str, spec: PulseSchedule, now: datetime, *, source: str = "sql") -> int:
    """Create or update a schedule (by tenant and name); a new one starts at its next slot after ``now``."""
    values = schedule_values(spec)
    with db.session() as s:
        row = {**values, "tenant": tenant, "name": spec.name, "source": source, "paused": False,
               "next_slot": spec.next_after(now), "created_at": now, "updated_at": now}
        [(schedule_id,)] = db.execute_upsert(
            s, SCHEDULES, [row], ["tenant", "name"],
            update={**{k: (lambda ex, k=k: getattr(ex, k)) for k in values}, "updated_at": lambda ex: ex.updated_at},
            returning=[SCHEDULES.c.id],
        )
        return int(schedule_id)


def open_slot(db: Database, tenant: str, schedule_id: int, slot: datetime, now: datetime) -> OpenedSlot | None:
    """Record that ``slot`` of the schedule fires. None when it was opened already (by this beat or
    another). Under the ``skip`` overlap policy, a slot due while an earlier one still runs is recorded
    as skipped, with the reason, and sends nothing."""
    with db.session() as s:
        schedule = s.execute(
            select(SCHEDULES).where(SCHEDULES.c.tenant == tenant, SCHEDULES.c.id == schedule_id).with_for_update()
        ).first()
        if schedule is None:
            raise NotFound("no such schedule", tenant=tenant, schedule=schedule_id)
        running = s.execute(
            select(PULSE_SLOTS.c.slot).where(
                PULSE_SLOTS.c.tenant == tenant, PULSE_SLOTS.c.schedule_id == schedule_id,
                PULSE_SLOTS.c.status == "running", PULSE_SLOTS.c.slot != slot,
            ).limit(1)
        ).first()
        status, reason = "running", None
        if running is not None and schedule.overlap == "skip":
            status, reason = "skipped", f"overlap: the slot of {as_utc(running.slot).isoformat()} was still running"
        total = None
        if status == "running":
            total = s.execute(
                select(func.count()).where(
                    ENTITIES.c.tenant == tenant, ENTITIES.c.automation == schedule.automation,
                    ENTITIES.c.created_at <= slot,
                )
            ).scalar_one()
        rows = db.execute_upsert(
            s, PULSE_SLOTS,
            [{"tenant": tenant, "schedule_id": schedule_id, "schedule": schedule.name, "slot": slot,
              "status": status, "reason": reason, "total": total, "done": 0, "started_at": now,
              "updated_at": now, "finished_at": now if status == "skipped" else None}],
            ["tenant", "schedule_id", "slot"], returning=[PULSE_SLOTS.c.id],
        )
        if not rows:
            return None
        return OpenedSlot(int(rows[0][0]), status, reason)


def fan_out_chunk(
    db: Database, tenant: str, slot_id: int, now: datetime, chunk: int = 1000
) -> list[IngestedEvent] | None:
    """Send the slot's message to the next ``chunk`` entities, in one transaction. Returns the events
    written (possibly none, when no entity in the page matched the schedule's filter), or None once the
    slot is finished (every entity sent, or the slot skipped)."""
    with db.session() as s:
        slot = s.execute(
            select(PULSE_SLOTS).where(PULSE_SLOTS.c.tenant == tenant, PULSE_SLOTS.c.id == slot_id).with_for_update()
        ).first()
        if slot is None:
            raise NotFound("no such pulse slot", tenant=tenant, slot=slot_id)
        if slot.status != "running":
            return None
        schedule = s.execute(
            select(SCHEDULES).where(SCHEDULES.c.tenant == tenant, SCHEDULES.c.id == slot.schedule_id)
        ).first()
        if schedule is None:
            raise NotFound("no such schedule", tenant=tenant, schedule=slot.schedule_id)
        at = as_utc(slot.slot)
        data = {**(schedule.data or {}), "now": at.timestamp(), "slot": at.isoformat()}
        if db.dialect == "postgresql" and (not schedule.where or sql_filter(schedule.where) is not None):
            return _page_pg(s, db, tenant, slot, schedule, at, data, now, chunk)
        # The state is read only when a filter needs it.
        columns = [ENTITIES.c.key, ENTITIES.c.state] if schedule.where else [ENTITIES.c.key]
        query = select(*columns).where(
            ENTITIES.c.tenant == tenant, ENTITIES.c.automation == schedule.automation, ENTITIES.c.created_at <= at,
        )
        if slot.cursor is not None:
            query = query.where(ENTITIES.c.key > slot.cursor)
        page = s.execute(query.order_by(ENTITIES.c.key).limit(chunk)).all()
        written = _send(s, db, tenant, slot, schedule, at, data, page, now)
        if len(page) < chunk:
            written += _last_pass(s, db, tenant, slot, schedule, at, data, now)
        _advance(s, tenant, slot_id, page[-1].key if page else slot.cursor, len(page), chunk, now)
        return written


def _send(
    s: Any, db: Database, tenant: str, slot: Any, schedule: Any, at: datetime, data: dict[str, Any],
    rows: Sequence[Any], now: datetime,
) -> list[IngestedEvent]:
    """The pulse's event for each entity of ``rows`` (``key``, and ``state`` when the schedule filters)
    that matches the filter; an entity already sent this slot is found by its idempotency key."""
    events = [
        EventIn(
            tenant=tenant, name=schedule.message, key=row.key, data=data, target=schedule.automation,
            idempotency_key=pulse_key(slot.schedule_id, at, row.key),
        )
        for row in rows
        if not schedule.where or state_matches(row.state, schedule.where)
    ]
    return write_events(s, db, events, now) if events else []


def _last_pass(
    s: Any, db: Database, tenant: str, slot: Any, schedule: Any, at: datetime, data: dict[str, Any], now: datetime,
) -> list[IngestedEvent]:
    """After the last page: the entities created within :data:`LATE_WINDOW` before the slot, again.

    An entity's ``created_at`` is its engine batch's start, not its commit: a batch that started before
    the slot and committed after a page passed its key was missed by the pages (guarantee 6 says every
    entity that existed at the slot is reached). The pass reads them through an index on
    ``(tenant, automation, created_at)``; those already sent are found by their idempotency key and not
    sent twice."""
    columns = [ENTITIES.c.key, ENTITIES.c.state] if schedule.where else [ENTITIES.c.key]
    late = s.execute(select(*columns).where(
        ENTITIES.c.tenant == tenant, ENTITIES.c.automation == schedule.automation,
        ENTITIES.c.created_at <= at, ENTITIES.c.created_at > at - LATE_WINDOW,
    ).order_by(ENTITIES.c.key)).all()
    return [e for e in _send(s, db, tenant, slot, schedule, at, data, late, now) if not e.duplicate]


def _advance(s: Any, tenant: str, slot_id: int, cursor: str | None, count: int, chunk: int, now: datetime) -> None:
    finished = count < chunk
    s.execute(
        update(PULSE_SLOTS)
        .where(PULSE_SLOTS.c.tenant == tenant, PULSE_SLOTS.c.id == slot_id)
        .values(
            cursor=cursor, done=PULSE_SLOTS.c.done + count, updated_at=now,
            status="done" if finished else "running", finished_at=now if finished else None,
        )
    )


# One page of a pulse, on PostgreSQL, in ONE statement (its filter too, when SQL can say it exactly):
# no entity key crosses the wire or is compiled into a statement. The same steps as write_events, less the
# lookup of stored idempotency keys: a page runs with its slot row locked and resumes from the slot's
# committed cursor, so it never repeats a key of its slot (the last pass, which may, goes through
# write_events). That lookup is also what made the plan depend on statistics: on tables never analysed,
# PostgreSQL probed it through the (tenant, name) index, scanning every event of the tenant per key.
# Bump each stream (in key order, as ingest does, so the two cannot deadlock), insert the events. The
# idempotency key is pulse_key() computed in SQL (sha256 of the key when the text would pass 255).
_PAGE_PG = """
    WITH page AS (
        SELECT e.key, {hit} AS hit FROM garrison_entities AS e
        WHERE e.tenant = :tenant AND e.automation = :automation AND e.created_at <= :at AND e.key > :after
        ORDER BY e.key LIMIT :chunk
    ),
    bumped AS (
        INSERT INTO garrison_streams (tenant, key, last_seq, updated_at)
        SELECT :tenant, p.key, 1, :now FROM page AS p WHERE p.hit ORDER BY p.key
        ON CONFLICT (tenant, key) DO UPDATE
        SET last_seq = garrison_streams.last_seq + 1, updated_at = excluded.updated_at
        RETURNING key, last_seq
    ),
    written AS (
        INSERT INTO garrison_events (tenant, key, seq, name, data, target, idempotency_key, system, created_at)
        SELECT :tenant, b.key, b.last_seq, :message, CAST(:data AS jsonb), :automation,
               CASE WHEN length(:prefix || b.key) <= 255 THEN :prefix || b.key
                    ELSE :prefix || 'sha256:' || encode(sha256(convert_to(b.key, 'UTF8')), 'hex') END,
               false, :now
        FROM bumped AS b
        RETURNING id, key, seq
    ),
    pended AS ({pending})
    SELECT (SELECT count(*) FROM page) AS n, (SELECT max(p.key) FROM page AS p) AS last,
           (SELECT json_agg(json_build_array(w.id, w.key, w.seq, coalesce(d.ours, false)))
            FROM written AS w LEFT JOIN pended AS d ON d.key = w.key) AS rows
"""
# The keys become pending as ingest makes them (garrison.core.pgbulk), from the bumped streams.
_PENDING_FROM_BUMPED = pgbulk.PENDING_UPSERT.format(rows="b.key, b.last_seq, :now, :now FROM bumped AS b")
_PAGE_PG_ALL = text(_PAGE_PG.format(hit="true", pending=_PENDING_FROM_BUMPED))


def sql_filter(where: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """A pulse's ``where`` as a SQL condition on ``e.state`` with exactly :func:`state_matches`' meaning,
    or None when it cannot be said exactly in SQL (then the page is filtered in Python). Exact for
    options that are strings, booleans or null: jsonb equality compares type and value, and a missing
    path gives NULL (no match). Numbers (1 and 1.0 are equal in jsonb, not in the filter), objects,
    arrays and path parts that are digits (jsonb reads them as array indexes) stay in Python."""
    clauses: list[str] = []
    params: dict[str, Any] = {}
    for n, (path, expected) in enumerate(where.items()):
        parts = path.split(".")
        options = list(expected) if isinstance(expected, list | tuple) else [expected]
        if any(not p or p.isdigit() for p in parts) or not all(o is None or isinstance(o, str | bool)
                                                              for o in options):
            return None
        clauses.append(f"(e.state #> CAST(:where_path_{n} AS text[])) IN "
                       f"(SELECT jsonb_array_elements(CAST(:where_values_{n} AS jsonb)))")
        params[f"where_path_{n}"] = parts
        params[f"where_values_{n}"] = json.dumps(options)
    return " AND ".join(clauses) or "true", params


def _page_pg(
    s: Any, db: Database, tenant: str, slot: Any, schedule: Any, at: datetime, data: dict[str, Any], now: datetime,
    chunk: int,
) -> list[IngestedEvent]:
    prefix = f"{PREFIX}pulse:{slot.schedule_id}:{at.isoformat()}:"
    statement = _PAGE_PG_ALL
    where_params: dict[str, Any] = {}
    if schedule.where:
        found = sql_filter(schedule.where)
        assert found is not None  # checked by the caller
        condition, where_params = found
        statement = text(_PAGE_PG.format(hit=f"({condition})", pending=_PENDING_FROM_BUMPED))
    row = s.execute(statement, {
        "tenant": tenant, "automation": schedule.automation, "at": at, "after": slot.cursor or "",
        "chunk": chunk, "prefix": prefix, "message": schedule.message, "data": json.dumps(data), "now": now,
        **where_params,
    }).one()
    written = [
        IngestedEvent(id=int(i), tenant=tenant, key=k, seq=int(q), name=schedule.message, data=data,
                      target=schedule.automation, idempotency_key=pulse_key(slot.schedule_id, at, k), created_at=now,
                      wake=bool(ours))
        for i, k, q, ours in (row.rows or [])
    ]
    if int(row.n) < chunk:
        written += _last_pass(s, db, tenant, slot, schedule, at, data, now)
    _advance(s, tenant, slot.id, row.last if row.n else slot.cursor, int(row.n), chunk, now)
    return written


def slot_progress(db: Database, tenant: str, slot_id: int) -> tuple[int, int | None]:
    """(entities done, total) of a pulse slot."""
    with db.session() as s:
        row = s.execute(
            select(PULSE_SLOTS.c.done, PULSE_SLOTS.c.total)
            .where(PULSE_SLOTS.c.tenant == tenant, PULSE_SLOTS.c.id == slot_id)
        ).one()
    return int(row.done), row.total


def pulse_key(schedule_id: int, slot: datetime, key: str) -> Reserved:
    """The idempotency key of one pulse event: one per (schedule, slot, entity), in garrison's namespace
    (the page statement on PostgreSQL computes the same text in SQL)."""
    text = f"{PREFIX}pulse:{schedule_id}:{slot.isoformat()}:{key}"
    if len(text) <= 255:
        return Reserved(text)
    digest = hashlib.sha256(key.encode()).hexdigest()
    return Reserved(f"{PREFIX}pulse:{schedule_id}:{slot.isoformat()}:sha256:{digest}")


__all__ = [
    "OpenedSlot", "fan_out_chunk", "open_slot", "pulse_key", "save_schedule", "slot_progress", "spec_of",
]


def run_pulse(
    client: Runtime, tenant: str, slot_id: int, chunk: int = 1000,
    progress: Callable[[int, int | None], None] | None = None,
) -> int:
    """Fan an opened pulse slot out page by page (each page one transaction), waking each page's keys.
    Safe to run twice at once or again after a crash: pages resume from the slot's committed cursor.
    ``progress(done, total)`` is called after each page."""
    sent = 0

    def beat() -> None:  # a slow page is alive: the relay re-publishes a slot only once this stops
        with client.db.session() as s:
            s.execute(update(PULSE_SLOTS).where(PULSE_SLOTS.c.tenant == tenant, PULSE_SLOTS.c.id == slot_id,
                                                PULSE_SLOTS.c.status == "running")
                      .values(updated_at=client.clock.now()))

    with log_context(tenant=tenant, slot_id=slot_id), beating(beat, client.settings.effect_heartbeat):
        while True:
            events = fan_out_chunk(client.db, tenant, slot_id, client.clock.now(), chunk)
            if events is None:
                return sent
            sent += len(events)
            if events:
                client.wake(events)
            if progress is not None:
                progress(*slot_progress(client.db, tenant, slot_id))


def relay_stalled(client: Runtime, cutoff: datetime) -> list[int]:
    """Re-publish pulse slots still running but untouched since ``cutoff`` (their task was lost, or the
    beat died between opening a slot and publishing it). Run by the relay task; returns the slot ids."""
    with client.db.session() as s:
        tenants = set(s.execute(
            select(PULSE_SLOTS.c.tenant).where(PULSE_SLOTS.c.status == "running").distinct()
        ).scalars())
        stalled = [
            (tenant, row.id, f"{row.schedule}@{row.slot}")
            for tenant in sorted(tenants)
            for row in s.execute(
                select(PULSE_SLOTS.c.id, PULSE_SLOTS.c.schedule, PULSE_SLOTS.c.slot).where(
                    PULSE_SLOTS.c.tenant == tenant, PULSE_SLOTS.c.status == "running",
                    PULSE_SLOTS.c.updated_at < cutoff,
                )
            )
        ]
    for tenant, slot_id, label in stalled:
        client.publisher.publish_pulse(tenant, slot_id, label)
    return [slot_id for _, slot_id, _ in stalled]
