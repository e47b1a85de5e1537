"""Operating figures for one tenant, read from SQL (the source of truth), for ``garrison stats``.

How fast events come in, how much work waits (messages past their key's cursor, timers due, effects not
done), what failed per automation, which pulse slots are fanning out, and how big each table is with the
oldest row its retention rule keeps (:mod:`garrison.ops.storage`). Every query is filtered by the
tenant; nothing here needs a worker or the broker, so the figures are right even when the fleet is down
(that is when they matter).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, select, text

from garrison.clock import as_utc
from garrison.core.engine import processed_seq
from garrison.core.runtime import Runtime
from garrison.errors import GarrisonError, ValidationError
from garrison.models import CURSORS, EFFECTS, ENTITIES, EVENTS, FAILURES, STREAMS, TIMERS, VERSIONS
from garrison.models.pulses import PULSE_SLOTS
from garrison.ops.health import BeatStatus, beat_status, stall_warning
from garrison.ops.inspect import jsonable
from garrison.ops.storage import TableStorage, storage

__all__ = [
    "AutomationStats", "BeatStatus", "PulseProgress", "Stats", "beat_status", "collect_stats", "count_entities",
    "entity_keys",
]

EFFECT_STATUSES = ("pending", "dispatched", "failed")


@dataclass(slots=True)
class AutomationStats:
    """One automation's share: entities, state changes in the window, failures waiting for a retry,
    effects not done (``effects_retrying``: those that failed at least once and will be tried again),
    timers pending (``timers_overdue``: their time has passed; ``timers_due_soon``: due within the window)."""

    automation: str
    entities: int = 0
    changes: int = 0
    failures: int = 0
    effects_pending: int = 0
    effects_dispatched: int = 0
    effects_failed: int = 0
    effects_retrying: int = 0
    timers_pending: int = 0
    # Entities halted at a failed message (on_failure="halt"), and behind (waiting for a worker that has
    # this automation, or catching up).
    halted: int = 0
    behind: int = 0
    timers_overdue: int = 0
    timers_due_soon: int = 0


@dataclass(frozen=True, slots=True)
class PulseProgress:
    """A pulse slot still fanning out: ``done`` of ``total`` entities sent."""

    id: int
    schedule: str
    slot: datetime
    done: int
    total: int | None
    started_at: datetime
    updated_at: datetime


@dataclass(slots=True)
class Stats:
    """What :func:`collect_stats` read, at ``at`` over the last ``window`` seconds.

    ``pending_messages`` counts every message committed past its key's cursor (work the workers have not
    applied yet); ``oldest_pending_at`` is when the oldest of them was ingested. ``timers_overdue`` are
    pending timers whose time has passed; ``timers_due_soon`` come due within the next window.
    """

    tenant: str
    at: datetime
    window: float
    events: int = 0
    pending_messages: int = 0
    pending_keys: int = 0
    oldest_pending_at: datetime | None = None
    timers_pending: int = 0
    timers_overdue: int = 0
    timers_due_soon: int = 0
    effects_pending: int = 0
    effects_dispatched: int = 0
    effects_failed: int = 0
    failures: int = 0
    effects_retrying: int = 0
    relay_after: float = 5.0
    beat: BeatStatus | None = None
    pulses: list[PulseProgress] = field(default_factory=list)
    automations: list[AutomationStats] = field(default_factory=list)
    # garrison's tables: sizes (every tenant's) and the tenant's oldest row under each retention rule.
    tables: list[TableStorage] = field(default_factory=list)

    @property
    def events_per_second(self) -> float:
        return self.events / self.window

    @property
    def oldest_pending_age(self) -> float | None:
        """Seconds the oldest pending message has waited (None when nothing is pending)."""
        if self.oldest_pending_at is None:
            return None
        return max((self.at - self.oldest_pending_at).total_seconds(), 0.0)

    @property
    def stalled(self) -> str | None:
        """Why pending work is not moving, when it is not: messages have waited longer than
        ``GARRISON_RELAY_AFTER`` while no beat runs (the relay that re-publishes them is beat's). None
        when nothing is wrong that these figures can see."""
        return stall_warning(self.oldest_pending_age, self.relay_after, self.beat)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = jsonable(asdict(self))
        out["events_per_second"] = round(self.events_per_second, 3)
        age = self.oldest_pending_age
        out["oldest_pending_age"] = None if age is None else round(age, 3)
        out["stalled"] = self.stalled
        return out


def collect_stats(client: Runtime, *, tenant: str | None = None, window: float = 60.0) -> Stats:
    """Read the figures of ``tenant`` (the settings' tenant by default) now, by the client's clock; rates
    are over the last ``window`` seconds."""
    if window <= 0:
        raise ValidationError("window must be positive", field="window")
    tenant = client.tenant_of(tenant)
    now = client.clock.now()
    since = now - timedelta(seconds=window)
    stats = Stats(tenant=tenant, at=now, window=window, relay_after=client.settings.relay_after)
    per: dict[str, AutomationStats] = {name: AutomationStats(name) for name in _registered(client)}

    def of(name: str) -> AutomationStats:
        return per.setdefault(name, AutomationStats(name))

    with client.db.session(readonly=True) as s:
        stats.events = s.execute(
            select(func.count()).select_from(EVENTS).where(EVENTS.c.tenant == tenant, EVENTS.c.created_at > since)
        ).scalar_one()
        messages, keys, oldest = s.execute(
            select(
                func.coalesce(func.sum(STREAMS.c.last_seq - processed_seq()), 0), func.count(STREAMS.c.key),
                func.min(EVENTS.c.created_at),
            )
            .select_from(STREAMS)
            .outerjoin(CURSORS, and_(CURSORS.c.tenant == STREAMS.c.tenant, CURSORS.c.key == STREAMS.c.key))
            .outerjoin(EVENTS, and_(  # the next message of each key waiting (at most one row per key)
                EVENTS.c.tenant == STREAMS.c.tenant, EVENTS.c.key == STREAMS.c.key,
                EVENTS.c.seq == processed_seq() + 1,
            ))
            .where(STREAMS.c.tenant == tenant, STREAMS.c.last_seq > processed_seq())
        ).one()
        stats.pending_messages, stats.pending_keys = int(messages), int(keys)
        stats.oldest_pending_at = None if oldest is None else as_utc(oldest)

        for name, count in s.execute(
            select(ENTITIES.c.automation, func.count())
            .where(ENTITIES.c.tenant == tenant)
            .group_by(ENTITIES.c.automation)
        ):
            of(name).entities = count
        for name, status, count in s.execute(
            select(ENTITIES.c.automation, ENTITIES.c.status, func.count())
            .where(ENTITIES.c.tenant == tenant, text("status <> 'active'"))
            .group_by(ENTITIES.c.automation, ENTITIES.c.status)
        ):
            if status in ("halted", "behind"):
                setattr(of(name), status, count)
        for name, count in s.execute(
            select(VERSIONS.c.automation, func.count())
            .where(VERSIONS.c.tenant == tenant, VERSIONS.c.created_at > since)
            .group_by(VERSIONS.c.automation)
        ):
            of(name).changes = count
        for name, count in s.execute(
            select(FAILURES.c.automation, func.count())
            .where(FAILURES.c.tenant == tenant, FAILURES.c.status == "failed")
            .group_by(FAILURES.c.automation)
        ):
            of(name).failures = count
        for name, status, count in s.execute(
            select(EFFECTS.c.automation, EFFECTS.c.status, func.count())
            .where(EFFECTS.c.tenant == tenant, EFFECTS.c.status.in_(EFFECT_STATUSES))
            .group_by(EFFECTS.c.automation, EFFECTS.c.status)
        ):
            setattr(of(name), f"effects_{status}", count)
        for name, count in s.execute(
            select(EFFECTS.c.automation, func.count())
            .where(EFFECTS.c.tenant == tenant, EFFECTS.c.status.in_(("pending", "dispatched", "retrying")),
                   EFFECTS.c.attempts > 0)
            .group_by(EFFECTS.c.automation)
        ):
            of(name).effects_retrying = count
        soon = now + timedelta(seconds=window)
        for name, total, overdue, due_soon in s.execute(
            select(
                TIMERS.c.automation, func.count(),
                func.count().filter(TIMERS.c.due_at <= now),
                func.count().filter(and_(TIMERS.c.due_at > now, TIMERS.c.due_at <= soon)),
            )
            .where(TIMERS.c.tenant == tenant, TIMERS.c.status == "pending")
            .group_by(TIMERS.c.automation)
        ):
            a = of(name)
            a.timers_pending, a.timers_overdue, a.timers_due_soon = total, overdue, due_soon

        stats.pulses = [
            PulseProgress(
                id=r.id, schedule=r.schedule, slot=as_utc(r.slot), done=r.done, total=r.total,
                started_at=as_utc(r.started_at), updated_at=as_utc(r.updated_at),
            )
            for r in s.execute(
                select(PULSE_SLOTS).where(PULSE_SLOTS.c.tenant == tenant, PULSE_SLOTS.c.status == "running")
                .order_by(PULSE_SLOTS.c.started_at, PULSE_SLOTS.c.id)
            )
        ]

    stats.beat = beat_status(client)
    stats.automations = [per[name] for name in sorted(per)]
    stats.tables = storage(client, tenant)
    for a in stats.automations:
        stats.timers_pending += a.timers_pending
        stats.timers_overdue += a.timers_overdue
        stats.timers_due_soon += a.timers_due_soon
        stats.effects_retrying += a.effects_retrying
        stats.effects_pending += a.effects_pending
        stats.effects_dispatched += a.effects_dispatched
        stats.effects_failed += a.effects_failed
        stats.failures += a.failures
    return stats


def _registered(client: Runtime) -> list[str]:
    """Names of the configured automations (shown even with nothing stored yet); none when their modules
    cannot be loaded here: the figures are still worth reading."""
    try:
        return [a.name for a in client.registry]
    except (GarrisonError, ImportError):
        return []


def count_entities(client: Runtime, automation: str, *, tenant: str | None = None) -> int:
    """How many entities ``automation`` has in the tenant."""
    tenant = client.tenant_of(tenant)
    with client.db.session(readonly=True) as s:
        return int(s.execute(
            select(func.count()).select_from(ENTITIES)
            .where(ENTITIES.c.tenant == tenant, ENTITIES.c.automation == automation)
        ).scalar_one())


def entity_keys(
    client: Runtime, automation: str, *, tenant: str | None = None, after: str = "", limit: int = 500
) -> list[str]:
    """A page of ``automation``'s entity keys in key order, after ``after`` (keyset paging)."""
    tenant = client.tenant_of(tenant)
    with client.db.session(readonly=True) as s:
        return list(s.execute(
            select(ENTITIES.c.key)
            .where(ENTITIES.c.tenant == tenant, ENTITIES.c.automation == automation, ENTITIES.c.key > after)
            .order_by(ENTITIES.c.key)
            .limit(limit)
        ).scalars())
