"""Leases in SQL: a name held by one owner until it expires (the beat's leadership, issue 4).

A lease is one row of ``garrison_leases`` keyed by ``(tenant, name)`` (fleet-wide leases pass a tenant
too, e.g. ``"_fleet"``). It has an ``owner`` token (:func:`new_owner`), an ``expires_at`` and an
``epoch``: a fencing counter that goes up every time a new tenure starts (another owner takes it, or an
owner takes it back after it lapsed or was released). It never goes down: a release keeps the row and
only marks it free, so a deposed holder's epoch is always lower than the current one and its writes can
be refused by comparing epochs.

Guarantees:

- At most one holder at a time, as long as the callers' clocks agree to within the TTL's margin: every
  decision ("is it expired?") is taken by the database against the ``now`` the caller passes, and the
  statements below are serialized per row, so two callers can never both get the same tenure.
- A holder must stop acting on the lease before ``expires_at`` (minus its clock skew): after that another
  owner may take it. Callers renew every ``ttl / 3`` so that one or two slow renewals do not lose it, and
  treat ``None`` from :func:`renew` or :func:`acquire` as "stop now".
- A holder that dies is replaced within ``ttl`` (plus the contenders' polling interval).

Race-freedom. :func:`acquire` is one statement, ``INSERT .. ON CONFLICT (tenant, name) DO UPDATE SET ..
WHERE <ours and live, or expired> RETURNING``. On PostgreSQL a conflicting insert locks the existing row
and evaluates the ``WHERE`` against its latest committed version (not the statement's snapshot), and two
concurrent first inserts are settled by the primary key: the loser waits and then takes the update
path. :func:`renew` and :func:`release` are single ``UPDATE .. WHERE owner = ..`` statements, which
re-check their ``WHERE`` on the locked row. On SQLite every transaction starts with ``BEGIN IMMEDIATE``
(see :mod:`garrison.core.db`), so writers are serialized outright. Every statement filters on the tenant.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, select, update
from sqlalchemy.dialects import postgresql, sqlite

from garrison.clock import as_utc
from garrison.core.db import Database
from garrison.models import LEASES

# ``owner`` of a released lease: no owner token is empty (refused by every function below).
FREE = ""
# ``expires_at`` of a released lease: earlier than any ``now``, so anyone may take it at once.
RELEASED_AT = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class LeaseState:
    """One tenure of a lease as a caller saw it: act on it only before ``expires_at``."""

    tenant: str
    name: str
    owner: str
    epoch: int
    expires_at: datetime
    acquired_at: datetime
    renewed_at: datetime


def new_owner(label: str = "lease") -> str:
    """A unique owner token: ``label@host:pid:random``, so two processes (or two objects in one) differ."""
    return f"{label}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def acquire(db: Database, tenant: str, name: str, owner: str, ttl: float, now: datetime) -> LeaseState | None:
    """Take the lease if it is free, expired or already ours and live (then it is renewed); None while
    another owner holds it. A new tenure (anything but renewing our own live lease) gets ``epoch + 1``
    and ``acquired_at = now``; renewing keeps both. ``now`` is the caller's clock: never read here."""
    _check(owner, ttl)
    now = as_utc(now)
    expires = now + timedelta(seconds=ttl)
    insert = postgresql.insert if db.dialect == "postgresql" else sqlite.insert
    base = insert(LEASES).values(
        tenant=tenant, name=name, owner=owner, epoch=1, expires_at=expires, acquired_at=now, renewed_at=now,
    )
    renewing = and_(LEASES.c.owner == base.excluded.owner, LEASES.c.expires_at > now)
    stmt = base.on_conflict_do_update(
        index_elements=[LEASES.c.tenant, LEASES.c.name],
        set_={
            "owner": base.excluded.owner,
            "epoch": case((renewing, LEASES.c.epoch), else_=LEASES.c.epoch + 1),
            "expires_at": base.excluded.expires_at,
            "acquired_at": case((renewing, LEASES.c.acquired_at), else_=base.excluded.acquired_at),
            "renewed_at": base.excluded.renewed_at,
        },
        # The conflict target is (tenant, name), so the row tested here is this tenant's.
        where=renewing | (LEASES.c.expires_at <= now),
    ).returning(*_COLUMNS)
    with db.session() as s:
        row = s.execute(stmt).first()
    return None if row is None else _state(tenant, name, row)


def renew(
    db: Database, tenant: str, name: str, owner: str, ttl: float, now: datetime, epoch: int | None = None,
) -> LeaseState | None:
    """Extend our lease to ``now + ttl``, only while it is still ours and not expired (and, given
    ``epoch``, still the same tenure); None when it was lost: stop acting on it."""
    with db.session() as s:
        return renew_in(s, tenant, name, owner, ttl, now, epoch=epoch)


def renew_in(
    session: Any, tenant: str, name: str, owner: str, ttl: float, now: datetime, epoch: int | None = None,
) -> LeaseState | None:
    """:func:`renew` in the caller's transaction: the lease row stays locked until it ends, so no other
    owner can take the lease before what the transaction writes is committed (a fence)."""
    _check(owner, ttl)
    now = as_utc(now)
    conditions = [LEASES.c.tenant == tenant, LEASES.c.name == name, LEASES.c.owner == owner,
                  LEASES.c.expires_at > now]
    if epoch is not None:
        conditions.append(LEASES.c.epoch == epoch)
    stmt = (update(LEASES).where(*conditions)
            .values(expires_at=now + timedelta(seconds=ttl), renewed_at=now).returning(*_COLUMNS))
    row = session.execute(stmt).first()
    return None if row is None else _state(tenant, name, row)


def release(db: Database, tenant: str, name: str, owner: str) -> bool:
    """Give the lease up so that anyone may take it at once (only its owner can); True when it was ours.
    The row stays (marked free), so the next tenure's epoch is still higher than every earlier one."""
    _check(owner, 1.0)
    with db.session() as s:
        row = s.execute(
            update(LEASES)
            .where(LEASES.c.tenant == tenant, LEASES.c.name == name, LEASES.c.owner == owner)
            .values(owner=FREE, expires_at=RELEASED_AT)
            .returning(LEASES.c.epoch)
        ).first()
    return row is not None


def holder(db: Database, tenant: str, name: str) -> LeaseState | None:
    """The lease's last holder, expired or not (compare ``expires_at`` with your clock), or None when
    nobody took it yet or it was released."""
    with db.session(readonly=True) as s:
        row = s.execute(
            select(*_COLUMNS).where(LEASES.c.tenant == tenant, LEASES.c.name == name, LEASES.c.owner != FREE)
        ).first()
    return None if row is None else _state(tenant, name, row)


_COLUMNS = (LEASES.c.owner, LEASES.c.epoch, LEASES.c.expires_at, LEASES.c.acquired_at, LEASES.c.renewed_at)


def _check(owner: str, ttl: float) -> None:
    if not owner:
        raise ValueError("a lease owner token must not be empty")
    if not ttl > 0:
        raise ValueError(f"a lease TTL must be positive, not {ttl!r}")


def _state(tenant: str, name: str, row: Any) -> LeaseState:
    return LeaseState(tenant=tenant, name=name, owner=row.owner, epoch=int(row.epoch),
                      expires_at=as_utc(row.expires_at), acquired_at=as_utc(row.acquired_at),
                      renewed_at=as_utc(row.renewed_at))
