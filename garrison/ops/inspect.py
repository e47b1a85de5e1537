"""Inspection: everything garrison holds about one key of one tenant, as plain dataclasses.

Journey runs of the key come as :class:`~garrison.core.runs.RunInfo` (history, open wait, timers,
log, result or error).

``garrison inspect KEY`` renders a :class:`KeyReport` as tables (or JSON); code can call
:func:`inspect_key` directly. Every query here is filtered by tenant, so a key of one tenant never shows
another tenant's rows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from garrison.clock import as_utc
from garrison.core.history import PastState, check_point, past_state
from garrison.core.runs import RunInfo, list_runs
from garrison.core.runtime import Runtime
from garrison.errors import NotFound
from garrison.models import CURSORS, EFFECTS, ENTITIES, EVENTS, FAILURES, STREAMS, VERSIONS
from garrison.ops.health import beat_status, stall_warning

__all__ = [
    "EffectRow",
    "EntityRow",
    "FailureRow",
    "KeyReport",
    "PastState",
    "PendingEvent",
    "RunInfo",
    "VersionRow",
    "inspect_key",
    "jsonable",
    "past_states",
]


@dataclass(frozen=True, slots=True)
class EntityRow:
    """The committed state of one automation at the key."""

    automation: str
    version: int
    cursor: int
    state: Any
    created_at: datetime
    updated_at: datetime
    # active; behind (messages after ``cursor`` wait for it: a worker without it took the key); halted (a
    # message failed under on_failure="halt": it waits at message ``cursor + 1`` for a retry or skip).
    status: str = "active"


@dataclass(frozen=True, slots=True)
class VersionRow:
    """One stored state version and the message that produced it."""

    automation: str
    version: int
    message: str
    seq: int | None
    event_id: int | None
    data: Any
    state: Any
    created_at: datetime


@dataclass(frozen=True, slots=True)
class PendingEvent:
    """A message committed for the key but not applied yet (its ``seq`` is past the key's cursor)."""

    id: int
    seq: int
    name: str
    target: str | None
    data: Any
    created_at: datetime


@dataclass(frozen=True, slots=True)
class FailureRow:
    """A message a handler refused by raising; ``garrison retry ID`` applies it again."""

    id: int
    automation: str
    seq: int | None
    event_id: int | None
    message: str
    error_type: str
    error: str
    status: str
    retry_event_id: int | None
    traceback: str
    created_at: datetime
    key: str = ""


@dataclass(frozen=True, slots=True)
class EffectRow:
    """One outbox row: a side effect written with a state change, and how far it got."""

    id: int
    automation: str
    kind: str
    name: str
    version: int | None
    status: str
    attempts: int
    error: str | None
    created_at: datetime
    done_at: datetime | None


@dataclass(slots=True)
class KeyReport:
    """What :func:`inspect_key` found. ``pending_count`` counts every unapplied message, even when
    ``pending`` is cut at the limit; ``versions_total`` likewise for the history."""

    tenant: str
    key: str
    last_seq: int = 0
    processed_seq: int = 0
    entities: list[EntityRow] = field(default_factory=list)
    versions: list[VersionRow] = field(default_factory=list)
    versions_total: int = 0
    pending: list[PendingEvent] = field(default_factory=list)
    failures: list[FailureRow] = field(default_factory=list)
    effects: list[EffectRow] = field(default_factory=list)
    runs: list[RunInfo] = field(default_factory=list)
    # Set when the key's pending messages wait past GARRISON_RELAY_AFTER with no beat running.
    warning: str | None = None

    @property
    def pending_count(self) -> int:
        return max(self.last_seq - self.processed_seq, 0)

    @property
    def found(self) -> bool:
        """Whether garrison holds anything at all for this key in this tenant."""
        return bool(self.last_seq or self.entities or self.failures or self.effects or self.runs)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (datetimes as ISO 8601 text)."""
        out: dict[str, Any] = jsonable(asdict(self))
        out["pending_count"] = self.pending_count
        return out


def inspect_key(
    client: Runtime,
    key: str,
    *,
    tenant: str | None = None,
    automation: str | None = None,
    history: int = 20,
    limit: int = 50,
) -> KeyReport:
    """Read the state, the last ``history`` versions, the pending messages, the failures, the effects and
    the journey runs (the newest ``limit``, with their timers) of ``key`` (of one ``automation``, or all of
    them) for ``tenant`` (the settings' tenant by default)."""
    tenant = client.tenant_of(tenant)
    report = KeyReport(tenant=tenant, key=key)
    with client.db.session(readonly=True) as s:
        report.last_seq = s.execute(
            select(STREAMS.c.last_seq).where(STREAMS.c.tenant == tenant, STREAMS.c.key == key)
        ).scalar() or 0
        report.processed_seq = s.execute(
            select(CURSORS.c.processed_seq).where(CURSORS.c.tenant == tenant, CURSORS.c.key == key)
        ).scalar() or 0

        entities = select(ENTITIES).where(ENTITIES.c.tenant == tenant, ENTITIES.c.key == key)
        versions = select(VERSIONS).where(VERSIONS.c.tenant == tenant, VERSIONS.c.key == key)
        counted = select(func.count()).select_from(VERSIONS).where(VERSIONS.c.tenant == tenant, VERSIONS.c.key == key)
        failures = select(FAILURES).where(FAILURES.c.tenant == tenant, FAILURES.c.key == key)
        effects = select(EFFECTS).where(EFFECTS.c.tenant == tenant, EFFECTS.c.key == key)
        if automation is not None:
            entities = entities.where(ENTITIES.c.automation == automation)
            versions = versions.where(VERSIONS.c.automation == automation)
            counted = counted.where(VERSIONS.c.automation == automation)
            failures = failures.where(FAILURES.c.automation == automation)
            effects = effects.where(EFFECTS.c.automation == automation)

        report.entities = [
            EntityRow(
                automation=r["automation"], version=r["version"], cursor=r["cursor"], state=r["state"],
                created_at=as_utc(r["created_at"]), updated_at=as_utc(r["updated_at"]), status=r["status"],
            )
            for r in s.execute(entities.order_by(ENTITIES.c.automation)).mappings()
        ]
        report.versions_total = s.execute(counted).scalar() or 0
        newest = s.execute(
            versions.order_by(
                VERSIONS.c.created_at.desc(), VERSIONS.c.seq.desc(), VERSIONS.c.version.desc()
            ).limit(history)
        ).mappings().all()
        report.versions = [
            VersionRow(
                automation=r["automation"], version=r["version"], message=r["message"], seq=r["seq"],
                event_id=r["event_id"], data=r["data"], state=r["state"], created_at=as_utc(r["created_at"]),
            )
            for r in reversed(newest)
        ]
        report.pending = [
            PendingEvent(
                id=r["id"], seq=r["seq"], name=r["name"], target=r["target"], data=r["data"],
                created_at=as_utc(r["created_at"]),
            )
            for r in s.execute(
                select(EVENTS)
                .where(EVENTS.c.tenant == tenant, EVENTS.c.key == key, EVENTS.c.seq > report.processed_seq)
                .order_by(EVENTS.c.seq)
                .limit(limit)
            ).mappings()
        ]
        report.failures = [
            FailureRow(
                id=r["id"], automation=r["automation"], seq=r["seq"], event_id=r["event_id"], message=r["message"],
                error_type=r["error_type"], error=r["error"], status=r["status"],
                retry_event_id=r["retry_event_id"], traceback=r["traceback"], created_at=as_utc(r["created_at"]),
                key=r["key"],
            )
            for r in s.execute(failures.order_by(FAILURES.c.id.desc()).limit(limit)).mappings()
        ]
        report.effects = [
            EffectRow(
                id=r["id"], automation=r["automation"], kind=r["kind"], name=_effect_name(r["payload"]),
                version=(r["payload"] or {}).get("version"), status=r["status"], attempts=r["attempts"],
                error=r["error"], created_at=as_utc(r["created_at"]),
                done_at=as_utc(r["done_at"]) if r["done_at"] is not None else None,
            )
            for r in s.execute(effects.order_by(EFFECTS.c.id.desc()).limit(limit)).mappings()
        ]
    report.runs = list_runs(client.db, tenant, automation=automation, key=key, limit=limit, timers=True)
    if report.pending:
        age = (client.clock.now() - report.pending[0].created_at).total_seconds()
        if age > client.settings.relay_after:
            report.warning = stall_warning(age, client.settings.relay_after, beat_status(client))
    report.failures.reverse()
    report.effects.reverse()
    report.runs.reverse()
    return report


def past_states(
    client: Runtime,
    key: str,
    *,
    tenant: str | None = None,
    automation: str | None = None,
    version: int | None = None,
    at: datetime | None = None,
) -> list[PastState]:
    """The state each automation at ``key`` (or only ``automation``) had at ``version`` or at the moment
    ``at`` (``garrison inspect KEY --version N``). NotFound when none of them has it."""
    check_point(version, at)
    tenant = client.tenant_of(tenant)
    if automation is not None:
        names = [automation]
    else:
        with client.db.session(readonly=True) as s:
            names = list(s.execute(
                select(ENTITIES.c.automation).where(ENTITIES.c.tenant == tenant, ENTITIES.c.key == key)
                .order_by(ENTITIES.c.automation)
            ).scalars())
    found: list[PastState] = []
    errors: list[NotFound] = []
    for name in names:
        try:
            found.append(past_state(client.db, tenant, name, key, version=version, at=at))
        except NotFound as exc:
            errors.append(exc)
    if not found:
        if errors:
            raise errors[0]
        raise NotFound(f"nothing stored for key {key!r}", tenant=tenant, key=key)
    return found


def _effect_name(payload: Any) -> str:
    """What the effect runs: a listener's or a command's name, when the payload says."""
    if not isinstance(payload, dict):
        return ""
    for field_name in ("listener", "command", "name"):
        value = payload.get(field_name)
        if isinstance(value, str):
            return value
    return ""


def jsonable(value: Any) -> Any:
    """Dataclass dicts made JSON-ready: datetimes as ISO 8601 text."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value
