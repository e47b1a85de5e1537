"""Time travel: an entity's state as it was at a stored version, or at a moment.

Every state change is a row of ``garrison_state_versions`` (casern's append-only log of versions), so
the past is a read: ``version=N`` is that row's state, ``at=datetime`` the newest version stored at or
before that moment. Retention (:mod:`garrison.core.retention`) deletes old versions; asking for one it
deleted raises :class:`~garrison.errors.NotFound` saying so, rather than answering with a wrong state.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from garrison.clock import as_utc
from garrison.core.db import Database
from garrison.errors import NotFound, ValidationError
from garrison.models import ENTITIES, VERSIONS

__all__ = ["PastState", "past_state"]


@dataclass(frozen=True, slots=True)
class PastState:
    """One stored version of an entity: its state and the message that produced it. ``version`` 0 (no
    row) means the entity had no state yet then."""

    automation: str
    key: str
    version: int
    state: Any
    message: str | None = None
    seq: int | None = None
    event_id: int | None = None
    created_at: datetime | None = None


def check_point(version: Any, at: Any) -> None:
    """Refuse a bad ``version`` / ``at`` pair (a :class:`ValidationError` naming the field)."""
    if version is not None and at is not None:
        raise ValidationError("give version or at, not both", field="at")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 0):
        raise ValidationError(f"version must be an int >= 0, not {version!r}", field="version")
    if at is not None and not isinstance(at, datetime):
        raise ValidationError(f"at must be a datetime, not {type(at).__name__}", field="at")


def past_state(
    db: Database, tenant: str, automation: str, key: str, *, version: int | None = None, at: datetime | None = None
) -> PastState:
    """The entity's state at ``version`` (0: before its first) or at the moment ``at`` (timezone-aware;
    a naive one is read as UTC). NotFound for a version it never had or one retention deleted."""
    check_point(version, at)
    entity = (VERSIONS.c.tenant == tenant, VERSIONS.c.automation == automation, VERSIONS.c.key == key)
    with db.session(readonly=True) as s:
        if version is not None:
            if version == 0:
                return PastState(automation, key, 0, None)
            row = s.execute(select(VERSIONS).where(*entity, VERSIONS.c.version == version)).first()
        else:
            assert at is not None
            row = s.execute(
                select(VERSIONS).where(*entity, VERSIONS.c.created_at <= as_utc(at))
                .order_by(VERSIONS.c.version.desc()).limit(1)
            ).first()
        if row is not None:
            return PastState(
                automation, key, row.version, row.state, row.message, row.seq, row.event_id, as_utc(row.created_at)
            )
        oldest = s.execute(select(func.min(VERSIONS.c.version)).where(*entity)).scalar()
        current = s.execute(
            select(ENTITIES.c.version).where(
                ENTITIES.c.tenant == tenant, ENTITIES.c.automation == automation, ENTITIES.c.key == key
            )
        ).scalar()
    where = {"tenant": tenant, "automation": automation, "key": key}
    if version is not None and (current is None or version > current):
        raise NotFound(f"{automation} {key!r} has no version {version} (it is at version {current or 0})",
                       version=version, **where)
    if oldest is not None and oldest > 1 and (version is None or version < oldest):
        asked = f"version {version}" if version is not None else f"its state at {as_utc(at).isoformat()}"  # type: ignore[arg-type]
        raise NotFound(
            f"{asked} of {automation} {key!r} was deleted by retention (the oldest version kept is {oldest}; "
            "see GARRISON_RETENTION_VERSIONS_DAYS)", oldest=oldest, **where,
        )
    if version is not None:
        raise NotFound(f"{automation} {key!r} has no stored version {version}", version=version, **where)
    return PastState(automation, key, 0, None)
