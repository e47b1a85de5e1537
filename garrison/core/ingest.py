"""Ingest: validate, then write events in one transaction with a per-key sequence.

The sequence comes from an upsert on the key's stream row, which holds that row's lock until commit:
two ingests for one key serialize, so sequence order is commit order for the key (guarantee 2). The
worker never touches the stream row, so an ingest never waits on a worker. In the same transaction the
key is marked pending (``garrison_pending``): the index the relay and the workers find work through. A
key already pending and published is not published again: the task on its way applies the new event too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, insert, select
from sqlmodel import Session

from garrison.clock import as_utc
from garrison.core import pgbulk
from garrison.core.db import Database
from garrison.core.jsondata import DEFAULT_MAX_NESTING, JSONRefused, check_json, check_text
from garrison.core.namespace import PREFIX, Reserved, is_reserved, legacy_key
from garrison.errors import PayloadTooLarge, ValidationError
from garrison.models import EVENTS, PENDING, STREAMS

MAX_NAME = 255
MAX_TENANT = 64


@dataclass(frozen=True, slots=True)
class EventIn:
    """A validated event, not yet written."""

    tenant: str
    name: str
    key: str
    data: dict[str, Any]
    idempotency_key: str | None = None
    target: str | None = None
    system: bool = False
    trace: str | None = None  # a W3C traceparent (garrison.core.instrument), stored with the event


@dataclass(frozen=True, slots=True)
class IngestedEvent:
    """An event as stored. ``duplicate`` is True when its idempotency key had been seen before."""

    id: int
    tenant: str
    key: str
    seq: int
    name: str
    data: dict[str, Any]
    target: str | None
    idempotency_key: str | None
    created_at: datetime
    duplicate: bool = False
    # Whether the caller should publish a task for the key (no task is on its way for it yet).
    wake: bool = field(default=False, repr=False, compare=False)


def validate(
    name: Any,
    key: Any,
    data: Any,
    *,
    tenant: Any,
    idempotency_key: Any = None,
    target: Any = None,
    system: bool = False,
    max_payload_bytes: int,
    max_nesting: int = DEFAULT_MAX_NESTING,
    where: str = "",
) -> EventIn:
    """Check one event's arguments; a :class:`ValidationError` names the field (``events[3].key``).

    Text must be storable (no NUL, no lone surrogate), data must be JSON as :func:`check_json` defines it
    (nesting, NaN, integers JSON peers read), and a user's idempotency key must stay out of garrison's
    namespace (:mod:`garrison.core.namespace`): a key garrison made itself is a :class:`Reserved` string.
    """
    _text(name, where + "name", MAX_NAME)
    _text(key, where + "key", MAX_NAME)
    _text(tenant, where + "tenant", MAX_TENANT)
    if idempotency_key is not None:
        check_idempotency_key(idempotency_key, where + "idempotency_key")
    if target is not None:
        _text(target, where + "target", MAX_NAME)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ValidationError(
            f"{where}data must be a JSON object (a dict), not {type(data).__name__}", field=where + "data"
        )
    try:
        plain = check_json(data if isinstance(data, dict) else dict(data), max_nesting=max_nesting)
    except JSONRefused as exc:
        at = where + "data" + ("" if not exc.path else exc.path if exc.path.startswith("[") else "." + exc.path)
        raise ValidationError(f"{at} {exc.reason}", field=where + "data", path=at) from exc
    encoded = json.dumps(plain, separators=(",", ":"))
    size = len(encoded.encode())
    if size > max_payload_bytes:
        raise PayloadTooLarge(
            f"{where}data is {size} bytes, over the limit of {max_payload_bytes} (GARRISON_MAX_PAYLOAD_BYTES)",
            field=where + "data",
            size=size,
            limit=max_payload_bytes,
        )
    return EventIn(
        tenant=str(tenant),
        name=str(name),
        key=str(key),
        data=json.loads(encoded),  # a copy: the caller's dict may change after ingest
        idempotency_key=None if idempotency_key is None else str(idempotency_key),
        target=None if target is None else str(target),
        system=bool(system),
    )


def check_idempotency_key(value: Any, field: str = "idempotency_key") -> str:
    """A user's idempotency key: storable text, outside garrison's namespace (a key garrison made itself
    is a :class:`Reserved` string)."""
    _text(value, field, MAX_NAME)
    if is_reserved(value) and not isinstance(value, Reserved):
        raise ValidationError(f"{field} must not start with {PREFIX!r}: that namespace is garrison's own",
                              field=field)
    return str(value)


def _text(value: Any, field: str, limit: int) -> None:
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be a string, not {type(value).__name__}", field=field)
    if not value.strip():
        raise ValidationError(f"{field} must not be empty", field=field)
    if len(value) > limit:
        raise ValidationError(f"{field} is longer than {limit} characters", field=field)
    bad = check_text(value)
    if bad:
        raise ValidationError(f"{field} {bad}", field=field)


def write_events(
    session: Session, db: Database, events: Sequence[EventIn], now: datetime, *, atomic: bool = False
) -> list[IngestedEvent]:
    """Insert events in the caller's transaction; results are in the order given.

    An event whose idempotency key is already stored (or appears earlier in the batch) is not written
    again: its result is the first event, marked ``duplicate``. ``atomic``: the events (all of one tenant
    and key, see :func:`check_atomic`) form one batch that applies to each entity together or not at all;
    either all of them are new or all are duplicates.
    """
    results: list[IngestedEvent | None] = [None] * len(events)
    by_tenant: dict[str, list[int]] = {}
    for index, event in enumerate(events):
        by_tenant.setdefault(event.tenant, []).append(index)
    for tenant, indexes in by_tenant.items():
        db.ensure_tenant(session, tenant, now)
        _write_tenant(session, db, tenant, events, indexes, results, now, atomic)
    return [r for r in results if r is not None]


def check_atomic(events: Sequence[EventIn]) -> None:
    """An atomic batch is one entity's: every event of one tenant and one key (go-state's Aggregate)."""
    if not events:
        return
    first = events[0]
    for i, e in enumerate(events):
        if (e.tenant, e.key) != (first.tenant, first.key):
            field = "tenant" if e.tenant != first.tenant else "key"
            raise ValidationError(
                f"an atomic batch applies to one entity: events[{i}].{field} differs from events[0].{field}",
                field=f"events[{i}].{field}",
            )


def _write_tenant(
    session: Session,
    db: Database,
    tenant: str,
    events: Sequence[EventIn],
    indexes: list[int],
    results: list[IngestedEvent | None],
    now: datetime,
    atomic: bool = False,
) -> None:
    idem_keys: set[str] = {ik for i in indexes if (ik := events[i].idempotency_key)}
    seen: dict[str, IngestedEvent] = {}
    if idem_keys:
        # A key garrison made may have been stored under its spelling from before the namespace.
        legacy = {old: new for new in idem_keys if is_reserved(new) and (old := legacy_key(new))}
        found = session.execute(
            select(EVENTS).where(EVENTS.c.tenant == tenant, EVENTS.c.idempotency_key.in_(idem_keys | set(legacy)))
        ).mappings()
        for row in found:
            stored: str = row["idempotency_key"]
            seen[stored if stored in idem_keys else legacy.get(stored, stored)] = _from_row(row, duplicate=True)

    fresh: list[int] = []
    first_in_batch: dict[str, int] = {}
    for i in indexes:
        ik = events[i].idempotency_key
        if ik is not None and ik in seen:
            results[i] = seen[ik]
        elif ik is not None and ik in first_in_batch:
            continue  # filled in below, once the first one has an id
        else:
            if ik is not None:
                first_in_batch[ik] = i
            fresh.append(i)
    if atomic and fresh and len(fresh) != len(indexes):
        raise ValidationError(
            "part of this atomic batch was ingested before (a repeated idempotency key): send all of it again "
            "with the same keys, or none of them", field="events",
        )
    if fresh:
        counts: dict[str, int] = {}
        for i in fresh:
            counts[events[i].key] = counts.get(events[i].key, 0) + 1
        # Sorted keys: concurrent batches lock stream rows in the same order, so they cannot deadlock.
        _write_fresh(session, db, tenant, events, fresh, counts, results, now, atomic)
    for i in indexes:
        if results[i] is None:
            first = results[first_in_batch[events[i].idempotency_key]]  # type: ignore[index]
            assert first is not None
            results[i] = _replace_duplicate(first)


def _write_fresh(
    session: Session,
    db: Database,
    tenant: str,
    events: Sequence[EventIn],
    fresh: list[int],
    counts: dict[str, int],
    results: list[IngestedEvent | None],
    now: datetime,
    atomic: bool = False,
) -> None:
    """Give each new event the next sequence number of its key (the stream rows are bumped, and so
    locked, in key order: concurrent batches cannot deadlock), insert the events and mark their keys
    pending. On PostgreSQL that is ONE statement whose rows travel as one JSON document
    (:func:`garrison.core.pgbulk.ingest`)."""
    if db.dialect == "postgresql":
        ordinal: dict[str, int] = {}
        rows: list[dict[str, Any]] = []
        for i in fresh:
            e = events[i]
            ordinal[e.key] = ordinal.get(e.key, 0) + 1
            row: dict[str, Any] = {"k": e.key, "o": ordinal[e.key], "n": e.name, "d": e.data}
            if e.target is not None:
                row["t"] = e.target
            if e.idempotency_key is not None:
                row["i"] = e.idempotency_key
            if e.system:
                row["y"] = True
            if e.trace is not None:
                row["r"] = e.trace
            rows.append(row)
        stored, wake = pgbulk.ingest(session, tenant, rows, now, atomic=atomic)
        # Within a key, sequence numbers follow the order given.
        by_key: dict[str, list[tuple[int, int]]] = {}
        for event_id, key, seq in sorted(stored, key=lambda r: (r[1], r[2])):
            by_key.setdefault(key, []).append((event_id, seq))
        taken: dict[str, int] = {}
        placed: list[tuple[int, int]] = []
        for i in fresh:
            key = events[i].key
            placed.append(by_key[key][taken.get(key, 0)])
            taken[key] = taken.get(key, 0) + 1
        ids = [event_id for event_id, _ in placed]
        seqs = [seq for _, seq in placed]
    else:
        last = dict(db.execute_upsert(
            session, STREAMS,
            [{"tenant": tenant, "key": k, "last_seq": counts[k], "updated_at": now} for k in sorted(counts)],
            ["tenant", "key"],
            update={"last_seq": lambda ex: STREAMS.c.last_seq + ex.last_seq, "updated_at": now},
            returning=(STREAMS.c.key, STREAMS.c.last_seq),
        ))
        next_seq = {k: last[k] - counts[k] + 1 for k in counts}
        seqs = []
        for i in fresh:
            seqs.append(next_seq[events[i].key])
            next_seq[events[i].key] += 1
        # An atomic batch is named by its first sequence number (unique for its key) and carries its size.
        batch = (seqs[0], len(seqs)) if atomic else (None, None)
        wake = _pending_upsert(session, db, tenant, last, now)
        ids = list(session.execute(
            insert(EVENTS).returning(EVENTS.c.id, sort_by_parameter_order=True),
            [{"tenant": tenant, "key": events[i].key, "seq": seq, "name": events[i].name, "data": events[i].data,
              "target": events[i].target, "idempotency_key": events[i].idempotency_key,
              "system": events[i].system, "batch_id": batch[0], "batch_size": batch[1], "trace": events[i].trace,
              "created_at": now}
             for i, seq in zip(fresh, seqs, strict=True)],
        ).scalars())
    for i, seq, event_id in zip(fresh, seqs, ids, strict=True):
        e = events[i]
        results[i] = IngestedEvent(
            id=event_id, tenant=tenant, key=e.key, seq=seq, name=e.name, data=e.data, target=e.target,
            idempotency_key=e.idempotency_key, created_at=now, wake=e.key in wake,
        )


def _pending_upsert(session: Session, db: Database, tenant: str, last: dict[str, int], now: datetime) -> set[str]:
    """Mark keys pending, as :data:`garrison.core.pgbulk.PENDING_UPSERT` does on PostgreSQL (SQLite)."""
    rows = db.execute_upsert(
        session, PENDING,
        [{"tenant": tenant, "key": k, "seq": last[k], "since": now, "published_at": now} for k in sorted(last)],
        ["tenant", "key"],
        update={"seq": lambda ex: func.max(PENDING.c.seq, ex.seq),
                "published_at": lambda ex: case((PENDING.c.needs.is_(None),
                                                 func.coalesce(PENDING.c.published_at, ex.published_at)),
                                                else_=PENDING.c.published_at)},
        returning=(PENDING.c.key, PENDING.c.published_at, PENDING.c.needs),
    )
    return {key for key, published, needs in rows
            if needs is not None or (published is not None and as_utc(published) == now)}


_FIELDS = ("tenant", "key", "seq", "name", "data", "target", "idempotency_key")


def _from_row(row: Any, duplicate: bool) -> IngestedEvent:
    return IngestedEvent(
        id=row["id"],
        **{k: row[k] for k in _FIELDS},
        created_at=as_utc(row["created_at"]),
        duplicate=duplicate,
    )


def _replace_duplicate(event: IngestedEvent) -> IngestedEvent:
    return replace(event, duplicate=True)
