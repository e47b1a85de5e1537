"""Retention: what garrison deletes, and when (issue 13: every table has a retention rule).

Each rule is one table, one setting (``GARRISON_RETENTION_<RULE>_DAYS``; 0 keeps that table's rows
forever) and one statement, scoped by tenant and found through an index, that deletes at most
``retention_batch`` rows in one short transaction. :func:`prune` runs the rules for every tenant, batch
after batch (at most :data:`MAX_BATCHES` per table and tenant in one pass, so a pass stays short and the
next one goes on); beat runs it every ``retention_interval`` seconds (``garrison.prune``), and
``garrison db prune [--dry-run]`` by hand.

What goes, and what is always kept:

- ``versions``: every version of the last T days is kept, and the ``retention_versions_keep`` versions of
  each entity before them; older ones go. Walked in feed order from where the last pass stopped (a mark in
  ``garrison_retention``), so a pass reads only what crossed the window since. A ``follow`` cursor behind
  what this deleted is refused (``CursorExpired``).
- ``events``: older than T days AND behind the key's cursor (applied) AND not in the look-back of a live
  or failed journey run of the key (after its trigger) AND not the message of a failure waiting for a
  retry. Replay then starts from the oldest kept version that every later event is kept for
  (:mod:`garrison.core.replay`). Idempotency keys are remembered as long as their event is.
- ``effects``: done, created more than T days ago (pending, dispatched and failed ones stay).
- ``timers``: fired or cancelled, due more than T days ago.
- ``runs``: completed or cancelled journey runs that ended more than T days ago (failed runs stay: they
  can be retried), with the rows that belong to them (:func:`delete_run_children`).
- ``failures``: resolved (retried or skipped) more than T days ago.
- ``pulse_slots``: done or skipped, finished more than T days ago.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Select, bindparam, delete, func, insert, literal, select, text, tuple_, update

from garrison.clock import as_utc
from garrison.config import Settings
from garrison.core.db import Database
from garrison.core.feed import VERSIONS_RULE
from garrison.models import CURSORS, EFFECTS, ENTITIES, EVENTS, FAILURES, RETENTION, RUNS, TENANTS, TIMERS, VERSIONS
from garrison.models.pulses import PULSE_SLOTS, SCHEDULES

log = logging.getLogger("garrison.retention")

__all__ = [
    "FINDERS", "MAX_BATCHES", "RULES", "PruneReport", "delete_run_children", "events_to_delete", "known_tenants",
    "prune", "versions_walk",
]

MAX_BATCHES = 100
# Run statuses whose look-back (events after their trigger) must stay, and failure statuses that are done.
LIVE_RUNS = ("running", "waiting", "sleeping", "stepping", "failed")
ENDED_RUNS = ("completed", "cancelled")
RESOLVED_FAILURES = ("retried", "skipped")
RULES = ("versions", "events", "effects", "timers", "runs", "failures", "pulse_slots")

# A rule: (db, settings, tenant, cutoff, now, dry_run) -> rows deleted (or that would be).
Runner = Callable[[Database, Settings, str, datetime, datetime, bool], int]
# How a rule finds rows: (tenant, cutoff, limit) -> a SELECT of up to ``limit`` ids.
Finder = Callable[[str, datetime, int], Select[tuple[int]]]


@dataclass(slots=True)
class PruneReport:
    """Rows deleted (or, in a dry run, that would be) per tenant and rule."""

    dry_run: bool = False
    deleted: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, tenant: str, rule: str, count: int) -> None:
        per = self.deleted.setdefault(tenant, {})
        per[rule] = per.get(rule, 0) + count

    @property
    def total(self) -> int:
        return sum(sum(per.values()) for per in self.deleted.values())


def window(settings: Settings, rule: str) -> float:
    """The rule's window in days (0: keep forever)."""
    return float(getattr(settings, f"retention_{rule}_days"))


def prune(
    db: Database, settings: Settings, now: datetime, *, tenants: Sequence[str] | None = None, dry_run: bool = False,
    rules: Sequence[str] = RULES,
) -> PruneReport:
    """Apply every rule to every tenant (or those given). ``dry_run`` counts what would go, deleting nothing."""
    report = PruneReport(dry_run=dry_run)
    for tenant in tenants if tenants is not None else known_tenants(db):
        for rule in rules:
            days = window(settings, rule)
            if days <= 0:
                continue
            cutoff = now - timedelta(days=days)
            count = _RUNNERS[rule](db, settings, tenant, cutoff, now, dry_run)
            report.add(tenant, rule, count)
    if report.total and not dry_run:
        log.info("retention deleted old rows", extra={"rows": report.total})
    return report


def known_tenants(db: Database) -> list[str]:
    """Every tenant that ingested (the tenants table) or has a schedule (a small table)."""
    with db.session(readonly=True) as s:
        found = set(s.execute(select(TENANTS.c.name)).scalars())
        found.update(s.execute(select(SCHEDULES.c.tenant).distinct()).scalars())
    return sorted(found)


# -- events ---------------------------------------------------------------------------------------------


def events_to_delete(tenant: str, cutoff: datetime, limit: int) -> Select[tuple[int]]:
    """The ids of up to ``limit`` events of ``tenant`` that may go: older than ``cutoff``, behind the key's
    cursor, not waited for by an entity of the key that is behind or halted before it, outside every live or
    failed run's look-back, not the message of a failure waiting for a retry."""
    # Correlated scalar subqueries, not EXISTS: PostgreSQL may turn an EXISTS into a hash join that scans
    # every cursor (or run) of the tenant; a scalar subquery stays one index probe per old event it reads.
    applied_up_to = select(CURSORS.c.processed_seq).where(
        CURSORS.c.tenant == tenant, CURSORS.c.key == EVENTS.c.key).scalar_subquery()
    live_run = select(literal(1)).where(
        RUNS.c.tenant == tenant, RUNS.c.key == EVENTS.c.key, RUNS.c.status.in_(LIVE_RUNS),
        RUNS.c.trigger["seq"].as_integer() < EVENTS.c.seq,
    ).limit(1).scalar_subquery()
    waiting_failure = select(literal(1)).where(
        FAILURES.c.tenant == tenant, FAILURES.c.key == EVENTS.c.key, FAILURES.c.status == "failed",
        FAILURES.c.event_id == EVENTS.c.id,
    ).limit(1).scalar_subquery()
    # An entity behind its key (a worker without its automation took the key) or halted still needs every
    # event after its own cursor: the index of waiting entities holds only those.
    waiting_entity = select(literal(1)).where(
        ENTITIES.c.tenant == tenant, ENTITIES.c.key == EVENTS.c.key, text("status <> 'active'"),
        ENTITIES.c.cursor < EVENTS.c.seq,
    ).limit(1).scalar_subquery()
    return (
        select(EVENTS.c.id)
        .where(EVENTS.c.tenant == tenant, EVENTS.c.created_at < cutoff, EVENTS.c.seq <= applied_up_to,
               live_run.is_(None), waiting_failure.is_(None), waiting_entity.is_(None))
        .order_by(EVENTS.c.created_at)
        .limit(limit)
    )


def _final(table: Any, statuses: Sequence[str], when: Any) -> Finder:
    """The finder of a table whose rows go once their status is final and ``when`` is past the window.
    Unordered: with several statuses an order by ``when`` would make PostgreSQL sort every old row of the
    index's ranges (or scan the table) to return the first ``limit``; any ``limit`` of them will do."""

    def find(tenant: str, cutoff: datetime, limit: int) -> Select[tuple[int]]:
        return (select(table.c.id).where(table.c.tenant == tenant, table.c.status.in_(statuses), when < cutoff)
                .limit(limit))

    return find


def delete_run_children(session: Any, tenant: str, run_ids: Sequence[int]) -> None:
    """Delete what belongs to deleted runs, in their transaction.

    Merge note (issue 13.1): the journey history table keyed by run goes here, e.g.
    ``session.execute(delete(RUN_HISTORY).where(RUN_HISTORY.c.tenant == tenant,
    RUN_HISTORY.c.run_id.in_(run_ids)))``. Today a run's history lives in its row."""


# Each rule but ``versions``: how it finds up to ``limit`` ids of the tenant's rows that may go.
FINDERS: dict[str, Finder] = {
    "events": events_to_delete,
    "effects": _final(EFFECTS, ("done",), EFFECTS.c.created_at),
    "timers": _final(TIMERS, ("fired", "cancelled"), TIMERS.c.due_at),
    "runs": _final(RUNS, ENDED_RUNS, RUNS.c.ended_at),
    "failures": _final(FAILURES, RESOLVED_FAILURES, FAILURES.c.created_at),
    "pulse_slots": _final(PULSE_SLOTS, ("done", "skipped"), PULSE_SLOTS.c.finished_at),
}
_TABLES = {"events": EVENTS, "effects": EFFECTS, "timers": TIMERS, "runs": RUNS, "failures": FAILURES,
           "pulse_slots": PULSE_SLOTS}


def _rule(rule: str) -> Runner:
    table, find = _TABLES[rule], FINDERS[rule]

    def run(db: Database, settings: Settings, tenant: str, cutoff: datetime, now: datetime, dry_run: bool) -> int:
        def remove(session: Any, ids: list[int]) -> None:
            if rule == "runs":
                delete_run_children(session, tenant, ids)
            session.execute(delete(table).where(table.c.tenant == tenant, table.c.id.in_(ids)))

        return _batches(db, settings, dry_run, lambda limit: find(tenant, cutoff, limit), remove)

    return run


def _batches(
    db: Database, settings: Settings, dry_run: bool, find: Callable[[int], Select[tuple[int]]],
    remove: Callable[[Any, list[int]], Any],
) -> int:
    """Find up to a batch of ids and ``remove(session, ids)`` them, one short transaction per batch, until
    a batch comes back short (or :data:`MAX_BATCHES`). A dry run counts what the pass would delete."""
    limit = settings.retention_batch
    if dry_run:
        with db.session(readonly=True) as s:
            found = find(limit * MAX_BATCHES).subquery()
            return int(s.execute(select(func.count()).select_from(found)).scalar_one())
    total = 0
    for _ in range(MAX_BATCHES):
        with db.session() as s:
            ids = list(s.execute(find(limit)).scalars())
            if ids:
                remove(s, ids)
        total += len(ids)
        if len(ids) < limit:
            break
    return total


# -- state versions -----------------------------------------------------------------------------------------


def _versions(db: Database, settings: Settings, tenant: str, cutoff: datetime, now: datetime, dry_run: bool) -> int:
    """Walk versions in feed order from the last pass's mark; each version older than the window deletes
    its entity's versions ``keep`` or more behind it. The mark moves past what was walked (not in a dry
    run, which counts what would go)."""
    keep, limit = settings.retention_versions_keep, settings.retention_batch
    with db.session(readonly=True) as s:
        mark = s.execute(select(RETENTION.c.position).where(
            RETENTION.c.tenant == tenant, RETENTION.c.rule == VERSIONS_RULE)).scalar()
    position = tuple(mark) if mark else None
    counted: dict[tuple[str, str], int] = {}  # dry run: per entity, the version counted up to
    entity = (VERSIONS.c.tenant == tenant, VERSIONS.c.key == bindparam("k"), VERSIONS.c.automation == bindparam("a"),
              VERSIONS.c.version <= bindparam("v"), VERSIONS.c.version > bindparam("low"))
    total = 0
    for _ in range(MAX_BATCHES):
        with db.session(readonly=dry_run) as s:
            page = s.execute(versions_walk(tenant, position, limit)).all()
            crossed = []
            for row in page:
                if as_utc(row.created_at) >= cutoff:
                    break
                crossed.append(row)
            if not crossed:
                break
            newest: dict[tuple[str, str], int] = {}
            for row in crossed:
                newest[(row.key, row.automation)] = max(newest.get((row.key, row.automation), 0), row.version)
            params: list[dict[str, Any]] = [{"k": k, "a": a, "v": v - keep, "low": counted.get((k, a), 0)}
                                            for (k, a), v in newest.items() if v - keep >= 1]
            if dry_run:
                gone = sum(int(s.execute(select(func.count()).where(*entity), p).scalar_one()) for p in params)
                counted.update({(str(p["k"]), str(p["a"])): int(p["v"]) for p in params})
            else:
                gone = sum(_deleted(s.execute(delete(VERSIONS).where(*entity), p)) for p in params)
            position = tuple(crossed[-1][:4])
            total += gone
            if not dry_run:
                _save_mark(s, tenant, list(position), int(crossed[-1].txid), gone, now)
        if len(crossed) < len(page) or len(page) < limit:
            break
    return total


def versions_walk(tenant: str, position: Sequence[Any] | None, limit: int) -> Select[Any]:
    """The next ``limit`` versions of the tenant in feed order after ``position`` (the walk's mark)."""
    order = (VERSIONS.c.txid, VERSIONS.c.key, VERSIONS.c.automation, VERSIONS.c.version)
    query = select(*order, VERSIONS.c.created_at).where(VERSIONS.c.tenant == tenant)
    if position is not None:
        query = query.where(VERSIONS.c.txid >= position[0], tuple_(*order) > tuple_(*position))
    return query.order_by(*order).limit(limit)


def _deleted(result: Any) -> int:
    return int(cast(CursorResult[Any], result).rowcount or 0)


def _save_mark(s: Any, tenant: str, position: list[Any], txid: int, gone: int, now: datetime) -> None:
    """Where the versions walk stands; with ``gone``, ``txid`` is the feed position deleted up to."""
    at = (RETENTION.c.tenant == tenant, RETENTION.c.rule == VERSIONS_RULE)
    found = s.execute(select(RETENTION.c.deleted_txid).where(*at)).first()
    deleted_txid = max(found.deleted_txid if found else 0, txid if gone else 0)
    values = {"position": position, "deleted_txid": deleted_txid, "last_run_at": now, "updated_at": now}
    if found is None:
        s.execute(insert(RETENTION).values(tenant=tenant, rule=VERSIONS_RULE, deleted=gone, **values))
    else:
        s.execute(update(RETENTION).where(*at).values(deleted=RETENTION.c.deleted + gone, **values))
_RUNNERS: dict[str, Runner] = {"versions": _versions, **{rule: _rule(rule) for rule in FINDERS}}
