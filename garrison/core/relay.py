"""The relay (ARCHITECTURE 5): re-publishes whatever was committed but not dispatched.

Keys whose next message has waited longer than ``relay_after`` (their ``garrison.process`` message was
lost, or the process died between commit and publish), effects committed but never published (or
published long ago and never finished), timers that came within the horizon (promoted to ETA tasks) and
timers whose time passed with nobody firing them. Run by beat as ``garrison.relay``; idempotent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, exists, or_, select, update

from garrison.core.engine import effect_labels, pending_keys, processed_seq
from garrison.core.runtime import Runtime
from garrison.core.timers import overdue, promote, timer_tenants
from garrison.models import EFFECTS, EVENTS, STREAMS

log = logging.getLogger("garrison.relay")

__all__ = ["RelayReport", "relay"]


@dataclass(slots=True)
class RelayReport:
    keys: dict[str, list[str]] = field(default_factory=dict)
    effects: dict[str, list[int]] = field(default_factory=dict)
    # Per tenant: timers promoted to ETA tasks (they came within the horizon), and overdue sweeps.
    timers: dict[str, int] = field(default_factory=dict)
    overdue: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return (sum(map(len, self.keys.values())) + sum(map(len, self.effects.values()))
                + sum(self.timers.values()) + len(self.overdue))


def relay(client: Runtime, limit: int = 10_000) -> RelayReport:
    """Re-publish keys whose next message has waited longer than ``relay_after``, and effects
    committed but not published (or published long ago and never finished)."""
    settings = client.settings
    now = client.clock.now()
    cutoff = now - timedelta(seconds=settings.relay_after)
    redispatch = now - timedelta(seconds=settings.effect_redispatch_after)
    report = RelayReport()
    labels: dict[int, str] = {}
    publisher = client.publisher
    db = client.db
    with db.session() as s:
        # The one query that spans tenants: it reads tenant names only, to scope everything after.
        tenants = set(s.execute(select(STREAMS.c.tenant).distinct()).scalars())
        unfinished = EFFECTS.c.status.in_(("pending", "dispatched"))
        tenants |= set(s.execute(select(EFFECTS.c.tenant).where(unfinished).distinct()).scalars())
        for tenant in sorted(tenants):
            next_is_old = exists().where(
                EVENTS.c.tenant == tenant, EVENTS.c.key == STREAMS.c.key,
                EVENTS.c.seq == processed_seq() + 1, EVENTS.c.created_at < cutoff,
            )
            keys = list(s.execute(pending_keys(tenant).where(next_is_old).limit(limit)).scalars())
            found = list(
                s.execute(
                    select(EFFECTS.c.id, EFFECTS.c.automation, EFFECTS.c.key)
                    .where(
                        EFFECTS.c.tenant == tenant,
                        or_(
                            and_(EFFECTS.c.status == "pending", EFFECTS.c.created_at < cutoff),
                            and_(EFFECTS.c.status == "dispatched", EFFECTS.c.dispatched_at < redispatch),
                        ),
                    )
                    .order_by(EFFECTS.c.id)
                    .limit(limit)
                )
            )
            ids = [row.id for row in found]
            labels.update(effect_labels(ids, found))
            if ids:
                s.execute(
                    update(EFFECTS)
                    .where(EFFECTS.c.tenant == tenant, EFFECTS.c.id.in_(ids))
                    .values(status="dispatched", dispatched_at=now)
                )
            if keys:
                report.keys[tenant] = keys
            if ids:
                report.effects[tenant] = ids
    for tenant, keys in report.keys.items():
        publisher.publish_keys(tenant, keys)
    for tenant, ids in report.effects.items():
        publisher.publish_effects(tenant, ids, labels)
    _relay_timers(client, report, now, limit)
    if report.total:
        log.info("relay re-published", extra={"keys": sum(map(len, report.keys.values())),
                                               "effects": sum(map(len, report.effects.values())),
                                               "timers": sum(report.timers.values()),
                                               "overdue": len(report.overdue)})
    return report


def _relay_timers(client: Runtime, report: RelayReport, now: datetime, limit: int) -> None:
    """Promote timers that came within the horizon to ETA tasks; sweep timers whose time passed more
    than ``relay_after`` ago (their ETA message was lost, or no worker ran when they came due)."""
    settings = client.settings
    db = client.db
    publisher = client.publisher
    late = now - timedelta(seconds=settings.relay_after)
    for tenant in sorted(timer_tenants(db)):
        dues = promote(db, tenant, now, settings.timer_horizon, limit)
        if dues:
            report.timers[tenant] = len(dues)
            publisher.publish_timers(tenant, dues)
        if overdue(db, tenant, late):
            report.overdue.append(tenant)
            publisher.publish_timers(tenant, [now])
