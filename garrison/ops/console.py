"""What the console's pages show, read from SQL for one tenant: the overview, a key, failures, runs.

The HTTP routes and templates live in :mod:`garrison.http.console`; everything they show comes from here
(and from :mod:`garrison.ops.stats`, :mod:`garrison.ops.inspect`, :mod:`garrison.ops.timeline`), so the
same figures are available to code and the layer rule (no FastAPI below ``garrison/http``) holds. Every
query filters on the tenant it is given: the console hands the tenant of the signed-in API key, never
one from the request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, select

from garrison.clock import as_utc
from garrison.core.engine import processed_seq
from garrison.core.runs import RunInfo, count_runs
from garrison.core.runtime import Runtime
from garrison.errors import NotFound
from garrison.models import CURSORS, EVENTS, FAILURES, STREAMS, VERSIONS
from garrison.ops.diff import Change, diff
from garrison.ops.inspect import FailureRow, KeyReport, VersionRow, inspect_key
from garrison.ops.stats import Stats, collect_stats

__all__ = [
    "Comparison",
    "EventRow",
    "KeyPage",
    "Overview",
    "PendingKey",
    "compare_versions",
    "key_page",
    "list_failures",
    "overview",
    "run_filters",
]


@dataclass(frozen=True, slots=True)
class PendingKey:
    """A key with messages not applied yet: how many, and since when the oldest waits."""

    key: str
    pending: int
    oldest_at: datetime | None


@dataclass(slots=True)
class Overview:
    """The tenant's figures (``stats``), its runs by status, the newest failures waiting for a retry, and
    the keys whose oldest message has waited longest."""

    stats: Stats
    runs: dict[str, int] = field(default_factory=dict)
    failures: list[FailureRow] = field(default_factory=list)
    lagging: list[PendingKey] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class EventRow:
    """One event of a key's log; ``applied`` once the key's cursor passed it."""

    id: int
    seq: int
    name: str
    target: str | None
    data: Any
    system: bool
    created_at: datetime
    applied: bool


@dataclass(slots=True)
class KeyPage:
    """A key: what ``garrison inspect`` shows, its newest events, and each version's changes from the
    version before it (``changes[(automation, version)]``)."""

    report: KeyReport
    events: list[EventRow] = field(default_factory=list)
    events_total: int = 0
    changes: dict[tuple[str, int], list[Change]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Comparison:
    """Two versions of one entity and what changed from the first to the second."""

    automation: str
    before: VersionRow
    after: VersionRow
    changes: list[Change]


def overview(client: Runtime, tenant: str, *, window: float = 60.0, limit: int = 10) -> Overview:
    """The console's first page for ``tenant``."""
    stats = collect_stats(client, tenant=tenant, window=window)
    page = Overview(stats=stats, runs=count_runs(client.db, tenant))
    with client.db.session() as s:
        page.failures = [
            _failure(r) for r in s.execute(
                select(FAILURES).where(FAILURES.c.tenant == tenant, FAILURES.c.status == "failed")
                .order_by(FAILURES.c.id.desc()).limit(limit)
            ).mappings()
        ]
        page.lagging = [
            PendingKey(r.key, int(r.pending), as_utc(r.oldest_at) if r.oldest_at else None)
            for r in s.execute(
                select(STREAMS.c.key, (STREAMS.c.last_seq - processed_seq()).label("pending"),
                       EVENTS.c.created_at.label("oldest_at"))
                .select_from(STREAMS)
                .outerjoin(CURSORS, and_(CURSORS.c.tenant == STREAMS.c.tenant, CURSORS.c.key == STREAMS.c.key))
                .outerjoin(EVENTS, and_(EVENTS.c.tenant == STREAMS.c.tenant, EVENTS.c.key == STREAMS.c.key,
                                        EVENTS.c.seq == processed_seq() + 1))
                .where(STREAMS.c.tenant == tenant, STREAMS.c.last_seq > processed_seq())
                .order_by(EVENTS.c.created_at, STREAMS.c.key)
                .limit(limit)
            )
        ]
    return page


def key_page(client: Runtime, tenant: str, key: str, *, limit: int = 50, history: int = 50) -> KeyPage:
    """A key of ``tenant``: state, versions (each with its changes), events, effects, failures, runs."""
    report = inspect_key(client, key, tenant=tenant, history=history, limit=limit)
    page = KeyPage(report=report)
    with client.db.session() as s:
        page.events_total = s.execute(
            select(func.count()).select_from(EVENTS).where(EVENTS.c.tenant == tenant, EVENTS.c.key == key)
        ).scalar_one()
        rows = s.execute(
            select(EVENTS.c.id, EVENTS.c.seq, EVENTS.c.name, EVENTS.c.target, EVENTS.c.data, EVENTS.c.system,
                   EVENTS.c.created_at)
            .where(EVENTS.c.tenant == tenant, EVENTS.c.key == key)
            .order_by(EVENTS.c.seq.desc()).limit(limit)
        ).all()
        page.events = [
            EventRow(r.id, r.seq, r.name, r.target, r.data, bool(r.system), as_utc(r.created_at),
                     r.seq <= report.processed_seq)
            for r in rows
        ]
        earliest: dict[str, int] = {}
        for v in report.versions:
            earliest[v.automation] = min(earliest.get(v.automation, v.version), v.version)
        previous: dict[tuple[str, int], Any] = {}
        for automation, first in earliest.items():
            if first > 1:  # the version before the oldest shown, to diff it against
                row = s.execute(
                    select(VERSIONS.c.state).where(VERSIONS.c.tenant == tenant, VERSIONS.c.key == key,
                                                   VERSIONS.c.automation == automation,
                                                   VERSIONS.c.version == first - 1)
                ).first()
                if row is not None:
                    previous[(automation, first - 1)] = row.state
    for v in report.versions:
        before = previous.get((v.automation, v.version - 1))
        page.changes[(v.automation, v.version)] = diff(before, v.state)
        previous[(v.automation, v.version)] = v.state
    return page


def compare_versions(client: Runtime, tenant: str, key: str, automation: str, a: int, b: int) -> Comparison:
    """Versions ``a`` and ``b`` of one entity and the changes from ``a`` to ``b``."""
    rows: dict[int, VersionRow] = {}
    with client.db.session() as s:
        for r in s.execute(
            select(VERSIONS).where(VERSIONS.c.tenant == tenant, VERSIONS.c.key == key,
                                   VERSIONS.c.automation == automation, VERSIONS.c.version.in_([a, b]))
        ).mappings():
            rows[r["version"]] = VersionRow(
                automation=r["automation"], version=r["version"], message=r["message"], seq=r["seq"],
                event_id=r["event_id"], data=r["data"], state=r["state"], created_at=as_utc(r["created_at"]),
            )
    for wanted in (a, b):
        if wanted not in rows:
            raise NotFound("no such version", tenant=tenant, key=key, automation=automation, version=wanted)
    return Comparison(automation, rows[a], rows[b], diff(rows[a].state, rows[b].state))


def list_failures(client: Runtime, tenant: str, *, status: str = "failed", automation: str | None = None,
                  limit: int = 100) -> list[FailureRow]:
    """Failures of ``tenant``, newest first: ``failed`` ones wait for a retry, ``retried`` ones were."""
    query = select(FAILURES).where(FAILURES.c.tenant == tenant, FAILURES.c.status == status)
    if automation:
        query = query.where(FAILURES.c.automation == automation)
    with client.db.session() as s:
        return [_failure(r) for r in s.execute(query.order_by(FAILURES.c.id.desc()).limit(limit)).mappings()]


def run_filters(runs: list[RunInfo]) -> dict[str, list[str]]:
    """The journeys and custom statuses seen in ``runs``, for the filter menus."""
    return {
        "journeys": sorted({r.automation for r in runs}),
        "custom": sorted({c for r in runs if (c := getattr(r, "custom_status", None))}),
    }


def _failure(r: Any) -> FailureRow:
    return FailureRow(
        id=r["id"], automation=r["automation"], seq=r["seq"], event_id=r["event_id"], message=r["message"],
        error_type=r["error_type"], error=r["error"], status=r["status"], retry_event_id=r["retry_event_id"],
        traceback=r["traceback"], created_at=as_utc(r["created_at"]), key=r["key"],
    )
