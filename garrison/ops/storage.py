"""How big garrison's tables are, and how old the oldest row retention keeps is (``garrison stats``).

Sizes are the whole table's, every tenant's: on PostgreSQL the planner's row estimate and the table's
bytes with its indexes and TOAST; on SQLite an exact count, and bytes when SQLite was built with the
``dbstat`` table. The oldest row is the tenant's, read through the index its retention rule uses, so an
operator sees that a window holds (an oldest row about as old as the window) or that it does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from garrison.clock import as_utc
from garrison.core.retention import ENDED_RUNS, RESOLVED_FAILURES, window
from garrison.core.runtime import Runtime
from garrison.models import EFFECTS, EVENTS, FAILURES, RUNS, TIMERS, VERSIONS, metadata
from garrison.models.pulses import PULSE_SLOTS

__all__ = ["TableStorage", "storage"]


@dataclass(frozen=True, slots=True)
class TableStorage:
    """One table: ``rows`` and ``bytes`` (None when the database cannot say), and for a table with a
    retention rule, its window (0: kept forever) and the oldest row of the tenant that rule governs."""

    table: str
    rows: int | None
    bytes: int | None
    rule: str | None = None
    window_days: float | None = None
    oldest: datetime | None = None


# The rule of each table, and the oldest of the tenant's rows it governs: (time column, filter).
_OLDEST: dict[str, tuple[str, Any, Any]] = {
    "garrison_events": ("events", EVENTS.c.created_at, None),
    "garrison_state_versions": ("versions", VERSIONS.c.created_at, None),
    "garrison_effects": ("effects", EFFECTS.c.created_at, EFFECTS.c.status == "done"),
    "garrison_timers": ("timers", TIMERS.c.due_at, TIMERS.c.status.in_(("fired", "cancelled"))),
    "garrison_runs": ("runs", RUNS.c.ended_at, RUNS.c.status.in_(ENDED_RUNS)),
    "garrison_failures": ("failures", FAILURES.c.created_at, FAILURES.c.status.in_(RESOLVED_FAILURES)),
    "garrison_pulse_slots": ("pulse_slots", PULSE_SLOTS.c.finished_at, PULSE_SLOTS.c.status.in_(("done", "skipped"))),
}


def storage(client: Runtime, tenant: str) -> list[TableStorage]:
    """Every garrison table, by name."""
    names = sorted(t.name for t in metadata.sorted_tables)
    db = client.db
    with db.session(readonly=True) as s:
        sizes = _pg_sizes(s, names) if db.dialect == "postgresql" else _sqlite_sizes(s, names)
        out = []
        for name in names:
            rows, size = sizes.get(name, (None, None))
            if name not in _OLDEST:
                out.append(TableStorage(name, rows, size))
                continue
            rule, when, only = _OLDEST[name]
            oldest = _oldest(s, tenant, when, only)
            out.append(TableStorage(name, rows, size, rule, window(client.settings, rule), oldest))
    return out


def _oldest(s: Any, tenant: str, when: Any, only: Any) -> datetime | None:
    if when is VERSIONS.c.created_at:  # the first version in feed order (the index retention walks)
        query = (select(VERSIONS.c.created_at).where(VERSIONS.c.tenant == tenant)
                 .order_by(VERSIONS.c.txid, VERSIONS.c.key, VERSIONS.c.automation, VERSIONS.c.version).limit(1))
    else:
        query = select(func.min(when)).where(when.table.c.tenant == tenant)
        if only is not None:
            query = query.where(only)
    found = s.execute(query).scalar()
    return None if found is None else as_utc(found)


def _pg_sizes(s: Any, names: list[str]) -> dict[str, tuple[int | None, int | None]]:
    rows = s.execute(text(
        "SELECT c.relname, c.reltuples::bigint, pg_total_relation_size(c.oid) FROM pg_class c "
        "WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r' AND c.relname = ANY(:names)"
    ), {"names": names}).all()
    # reltuples is -1 until the table was first analyzed: unknown, not negative.
    return {name: (None if estimate < 0 else int(estimate), int(size)) for name, estimate, size in rows}


def _sqlite_sizes(s: Any, names: list[str]) -> dict[str, tuple[int | None, int | None]]:
    counts = {name: int(s.execute(text(f'SELECT count(*) FROM "{name}"')).scalar_one()) for name in names}
    try:
        pages = dict(s.execute(text("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name")).all())
    except DBAPIError:  # SQLite built without the dbstat table
        pages = {}
    sizes: dict[str, tuple[int | None, int | None]] = {}
    for name in names:
        indexes = [i for i in pages if i == name or i.startswith((f"ix_{name}_", f"sqlite_autoindex_{name}_"))]
        sizes[name] = (counts[name], sum(int(pages[i]) for i in indexes) if name in pages else None)
    return sizes
