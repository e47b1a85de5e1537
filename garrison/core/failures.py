"""Failed messages: retry and skip (``garrison retry`` / ``garrison skip``).

A handler that raised left a failure row with its traceback (guarantee 7). What a retry does depends on
what the entity did then:

- ``on_failure="skip"`` (the default): the entity went on with its next messages. A retry applies the
  failed message again, now, to the entity's current state: it is ingested anew for the same automation
  (an atomic batch as a whole), through every guarantee of a fresh event.
- ``on_failure="halt"``: the entity stopped at the failed message and its later messages wait. A retry
  applies the message again in place, then the ones that waited, in order; a skip passes over it (the
  whole atomic batch) and applies the ones that waited.

Both take the key's lock (its cursor row), as the engine does, so neither races a batch of the key.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, update

from garrison.core import fleet
from garrison.core.db import Database
from garrison.core.engine import EVENT_COLUMNS
from garrison.core.ingest import EventIn, IngestedEvent, write_events
from garrison.core.namespace import reserved
from garrison.errors import GarrisonError, NotFound
from garrison.models import CURSORS, ENTITIES, EVENTS, FAILURES

__all__ = ["retry", "skip"]


def retry(db: Database, tenant: str, failure_id: int, now: datetime) -> IngestedEvent:
    """Apply a failed message again. Returns the event that will be applied: a new one (an entity that
    skipped the failure) or the failed message itself (an entity halted at it)."""
    with db.session() as s:
        failure = _failure(s, tenant, failure_id)
        halted = _halted_at(s, tenant, failure)
        if halted:
            s.execute(_entity(tenant, failure).values(status="behind", updated_at=now))
            stored = _stored(s, tenant, failure["event_id"])
        else:
            stored = _ingest_again(s, db, tenant, failure, now)
        s.execute(update(FAILURES).where(FAILURES.c.tenant == tenant, FAILURES.c.id == failure_id)
                  .values(status="retried", retry_event_id=stored.id))
        if halted:
            fleet.mark_pending(s, db, tenant, failure["key"], failure["seq"], now)
    return stored


def skip(db: Database, tenant: str, failure_id: int, now: datetime) -> int:
    """Pass over a failed message for good. An entity halted at it goes on with the messages after it
    (after the whole atomic batch). Returns the sequence number the entity goes on after."""
    with db.session() as s:
        failure = _failure(s, tenant, failure_id)
        last = _last_of_batch(s, tenant, failure)
        if _halted_at(s, tenant, failure):
            s.execute(_entity(tenant, failure).values(status="behind", cursor=last, updated_at=now))
            fleet.mark_pending(s, db, tenant, failure["key"], last, now)
        s.execute(update(FAILURES).where(FAILURES.c.tenant == tenant, FAILURES.c.id == failure_id)
                  .values(status="skipped"))
    return last


def _failure(s: Any, tenant: str, failure_id: int) -> Any:
    failure = s.execute(
        select(FAILURES).where(FAILURES.c.tenant == tenant, FAILURES.c.id == failure_id).with_for_update()
    ).mappings().first()
    if failure is None:
        raise NotFound("no such failure", tenant=tenant, failure_id=failure_id)
    if failure["status"] != "failed":
        raise GarrisonError(
            f"failure {failure_id} is {failure['status']}"
            + (f" (event {failure['retry_event_id']})" if failure["retry_event_id"] else ""),
            tenant=tenant, failure_id=failure_id,
        )
    # The key's lock, taken as the engine takes it: no batch of the key runs meanwhile.
    s.execute(select(CURSORS.c.key).where(CURSORS.c.tenant == tenant, CURSORS.c.key == failure["key"])
              .with_for_update()).all()
    return failure


def _entity(tenant: str, failure: Any) -> Any:
    return update(ENTITIES).where(
        ENTITIES.c.tenant == tenant, ENTITIES.c.automation == failure["automation"], ENTITIES.c.key == failure["key"]
    )


def _halted_at(s: Any, tenant: str, failure: Any) -> bool:
    row = s.execute(
        select(ENTITIES.c.status, ENTITIES.c.cursor).where(
            ENTITIES.c.tenant == tenant, ENTITIES.c.automation == failure["automation"],
            ENTITIES.c.key == failure["key"],
        )
    ).first()
    seq = failure["seq"]
    return row is not None and row.status == "halted" and seq is not None and row.cursor == seq - 1


def _batch(s: Any, tenant: str, failure: Any) -> list[Any]:
    """The failed message's event, or every event of its atomic batch, in order."""
    first = s.execute(
        select(*EVENT_COLUMNS, EVENTS.c.batch_id).where(EVENTS.c.tenant == tenant, EVENTS.c.id == failure["event_id"])
    ).first()
    if first is None:
        return []
    if first.batch_id is None:
        return [first]
    return list(s.execute(
        select(*EVENT_COLUMNS).where(EVENTS.c.tenant == tenant, EVENTS.c.key == first.key,
                                     EVENTS.c.batch_id == first.batch_id).order_by(EVENTS.c.seq)
    ))


def _last_of_batch(s: Any, tenant: str, failure: Any) -> int:
    rows = _batch(s, tenant, failure)
    return int(rows[-1].seq) if rows else int(failure["seq"] or 0)


def _stored(s: Any, tenant: str, event_id: int) -> IngestedEvent:
    row = s.execute(select(*EVENT_COLUMNS).where(EVENTS.c.tenant == tenant, EVENTS.c.id == event_id)).first()
    if row is None:
        raise NotFound("the failed message's event is no longer stored", tenant=tenant, event_id=event_id)
    return IngestedEvent(
        id=row.id, tenant=tenant, key=row.key, seq=row.seq, name=row.name, data=row.data, target=row.target,
        idempotency_key=row.idempotency_key, created_at=row.created_at, wake=True,
    )


def _ingest_again(s: Any, db: Database, tenant: str, failure: Any, now: datetime) -> IngestedEvent:
    rows = _batch(s, tenant, failure)
    failure_id = failure["id"]
    if len(rows) <= 1:
        data = rows[0].data if rows else {}
        events = [EventIn(tenant=tenant, name=failure["message"], key=failure["key"], data=data,
                          idempotency_key=reserved("retry", failure_id), target=failure["automation"])]
    else:
        events = [EventIn(tenant=tenant, name=r.name, key=r.key, data=r.data,
                          idempotency_key=reserved("retry", failure_id, i), target=failure["automation"])
                  for i, r in enumerate(rows)]
    return write_events(s, db, events, now, atomic=len(events) > 1)[0]
