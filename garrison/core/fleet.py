"""The fleet: which automations the workers run, and which keys wait for which of them.

The fleet is never uniform (guarantee 9): during a rolling deploy, or with one worker started with the
wrong environment, workers hold different automations. Every worker registers its automations, with
their routes, when it starts, and beats while it runs (``garrison_automations``). The engine reads the
registered routes of the automations its process lacks, after it has read a batch's messages, and holds
back every message meant for one of them: that entity is marked behind, its key waits (``needs``) for a
worker that has it, which catches it up from the log, in order. Nothing is consumed on behalf of an
automation a worker does not have.

The pending keys (``garrison_pending``) are the index of work: the relay, the claim of a ``process``
task and the worker's own loop read them, never the streams and cursors of every key.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, delete, or_, select, update

from garrison.clock import as_utc
from garrison.core import pgbulk
from garrison.core.contract import Automation, Route
from garrison.core.db import Database
from garrison.core.registry import Registry
from garrison.models import AUTOMATIONS, CURSORS, PENDING

__all__ = [
    "AutomationInfo", "claim", "heartbeat", "list_automations", "mark_pending", "register", "remote_routes",
    "retire", "settle", "still_pending",
]


@dataclass(frozen=True, slots=True)
class AutomationInfo:
    """One automation as the fleet registered it."""

    name: str
    style: str
    route: Route
    holder: str
    first_seen_at: datetime
    last_seen_at: datetime
    retired_at: datetime | None

    def live(self, now: datetime, ttl: float) -> bool:
        return self.retired_at is None and self.last_seen_at >= now - timedelta(seconds=ttl)


def holder_name() -> str:
    return socket.gethostname()


def register(db: Database, automations: Iterable[Automation], holder: str, now: datetime) -> None:
    """Record (or refresh) the automations of a starting worker, un-retiring any of them."""
    rows = [{"name": a.name, "style": a.style, "route": a.route().to_json(), "holder": holder,
             "first_seen_at": now, "last_seen_at": now, "retired_at": None} for a in automations]
    if not rows:
        return
    with db.session() as s:
        db.execute_upsert(
            s, AUTOMATIONS, sorted(rows, key=lambda r: r["name"]), ["name"],
            update={c: (lambda ex, c=c: getattr(ex, c))
                    for c in ("style", "route", "holder", "last_seen_at", "retired_at")},
        )


def heartbeat(db: Database, names: Sequence[str], holder: str, now: datetime) -> None:
    """A running worker still has these automations."""
    if not names:
        return
    with db.session() as s:
        s.execute(
            update(AUTOMATIONS).where(AUTOMATIONS.c.name.in_(sorted(names)), AUTOMATIONS.c.retired_at.is_(None))
            .values(last_seen_at=now, holder=holder)
        )


def retire(db: Database, name: str, now: datetime) -> bool:
    """Take an automation out of the fleet now: messages meant for it stop waiting for it, and keys that
    waited only for it are released. Returns False when no automation of that name is registered."""
    with db.session() as s:
        done = s.execute(update(AUTOMATIONS).where(AUTOMATIONS.c.name == name).values(retired_at=now))
        # Keys that waited for it alone: the next ingest or the relay takes them like any other key.
        s.execute(update(PENDING).where(PENDING.c.needs == name).values(needs=None, published_at=None))
    return bool(done.rowcount)  # type: ignore[attr-defined]


def list_automations(db: Database) -> list[AutomationInfo]:
    with db.session() as s:
        rows = s.execute(select(AUTOMATIONS).order_by(AUTOMATIONS.c.name)).mappings().all()
    return [_info(r) for r in rows]


def remote_routes(session: Any, local: Registry, now: datetime, ttl: float) -> list[tuple[str, Route]]:
    """The live automations of the fleet this process does not have, with their routes."""
    rows = session.execute(
        select(AUTOMATIONS.c.name, AUTOMATIONS.c.route).where(
            AUTOMATIONS.c.retired_at.is_(None), AUTOMATIONS.c.last_seen_at >= now - timedelta(seconds=ttl),
        )
    )
    return [(r.name, Route.from_json(r.route)) for r in rows if r.name not in local]


def claim(session: Any, db: Database, tenant: str, exclude: set[str], limit: int) -> dict[str, int]:
    """Other keys of ``tenant`` waiting for any worker, locked for this transaction (keys another worker
    holds are skipped, not waited for): ``{key: cursor}``. Single events arriving one at a time are applied
    in batches this way. Only keys whose cursor row exists are taken (a key's first task makes it)."""
    if limit <= 0:
        return {}
    candidates = list(session.execute(
        select(PENDING.c.key).where(PENDING.c.tenant == tenant, PENDING.c.needs.is_(None))
        .order_by(PENDING.c.since).limit(limit + len(exclude))
    ).scalars())
    keys = sorted(k for k in candidates if k not in exclude)[:limit]
    if not keys:
        return {}
    locked = select(CURSORS.c.key, CURSORS.c.processed_seq).where(
        CURSORS.c.tenant == tenant, CURSORS.c.key.in_(keys)
    ).order_by(CURSORS.c.key)
    if db.dialect == "postgresql":
        locked = locked.with_for_update(skip_locked=True)
    return {r.key: r.processed_seq for r in session.execute(locked)}


def settle(
    session: Any, db: Database, tenant: str, done: Mapping[str, int], needs: Mapping[str, tuple[str, int]],
    now: datetime,
) -> tuple[set[str], set[str]]:
    """Keys applied up to ``done[key]`` leave the pending index, unless an ingest raised them meanwhile;
    keys whose remaining work waits for an automation this process lacks are marked with it. Returns the
    keys of ``done`` that stay pending (the caller goes on with them: no task was published for what
    arrived meanwhile) and the keys that newly wait for an automation (to publish to its queue)."""
    kept: set[str] = set()
    if done and db.dialect == "postgresql":
        kept = pgbulk.pending_done(session, tenant, dict(done))
    elif done:
        # SQLite serializes writers: no ingest commits during this transaction, so nothing stays.
        session.execute(
            delete(PENDING).where(PENDING.c.tenant == tenant, PENDING.c.key == bindparam("k"),
                                  PENDING.c.seq <= bindparam("q")),
            [{"k": k, "q": q} for k, q in done.items()],
        )
    fresh: set[str] = set()
    if needs:
        before = dict(session.execute(
            select(PENDING.c.key, PENDING.c.needs).where(PENDING.c.tenant == tenant, PENDING.c.key.in_(sorted(needs)))
        ).all())
        db.execute_upsert(
            session, PENDING,
            [{"tenant": tenant, "key": k, "seq": q, "since": now, "published_at": now, "needs": name}
             for k, (name, q) in sorted(needs.items())],
            ["tenant", "key"],
            update={"needs": lambda ex: ex.needs, "published_at": lambda ex: ex.published_at},
        )
        fresh = {k for k, (name, _) in needs.items() if before.get(k) != name}
    return kept, fresh


def still_pending(db: Database, tenant: str, keys: Iterable[str], local: Registry) -> list[str]:
    """Which of ``keys`` still have work this process can do (messages, or an entity of one of its
    automations behind)."""
    wanted = sorted(set(keys))
    if not wanted:
        return []
    with db.session() as s:
        rows = s.execute(
            select(PENDING.c.key, PENDING.c.needs).where(PENDING.c.tenant == tenant, PENDING.c.key.in_(wanted))
        ).all()
    return [r.key for r in rows if r.needs is None or r.needs in local]


def mark_pending(session: Any, db: Database, tenant: str, key: str, seq: int, now: datetime) -> None:
    """Put a key back in the pending index (a halted entity retried or skipped must catch up)."""
    db.execute_upsert(
        session, PENDING, [{"tenant": tenant, "key": key, "seq": seq, "since": now, "published_at": now}],
        ["tenant", "key"], update={"needs": lambda ex: ex.needs, "published_at": lambda ex: ex.published_at},
    )


def stalled(session: Any, tenant: str, cutoff: datetime, limit: int) -> list[str]:
    """Keys of ``tenant`` pending since before ``cutoff`` with no task published since: their message was
    lost, or the process died between commit and publish. Found through the pending index."""
    return list(session.execute(
        select(PENDING.c.key).where(
            PENDING.c.tenant == tenant, PENDING.c.needs.is_(None), PENDING.c.since < cutoff,
            or_(PENDING.c.published_at.is_(None), PENDING.c.published_at < cutoff),
        ).order_by(PENDING.c.since).limit(limit)
    ).scalars())


def waiting_for(session: Any, tenant: str, automations: Sequence[str], cutoff: datetime,
                limit: int) -> list[tuple[str, str]]:
    """``(key, automation)`` of keys waiting for one of ``automations`` (live ones), not asked since
    ``cutoff``."""
    if not automations:
        return []
    rows = session.execute(
        select(PENDING.c.key, PENDING.c.needs).where(
            PENDING.c.tenant == tenant, PENDING.c.needs.in_(sorted(automations)),
            and_(PENDING.c.since < cutoff, or_(PENDING.c.published_at.is_(None), PENDING.c.published_at < cutoff)),
        ).order_by(PENDING.c.needs, PENDING.c.since).limit(limit)
    ).all()
    return [(r.key, r.needs) for r in rows]


def _info(row: Any) -> AutomationInfo:
    return AutomationInfo(
        name=row["name"], style=row["style"], route=Route.from_json(row["route"]), holder=row["holder"],
        first_seen_at=as_utc(row["first_seen_at"]), last_seen_at=as_utc(row["last_seen_at"]),
        retired_at=None if row["retired_at"] is None else as_utc(row["retired_at"]),
    )
