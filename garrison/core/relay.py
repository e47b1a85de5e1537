"""The relay (ARCHITECTURE 5): re-publishes whatever was committed but not dispatched.

Run by beat as ``garrison.relay`` every ``GARRISON_RELAY_INTERVAL``; idempotent. Everything it looks at
is found through an index, tenant by tenant (the tenants table), so a pass costs the work that is due,
not the number of keys, timers or effects an install holds:

- keys pending for longer than ``relay_after`` with no task published since (their ``garrison.process``
  message was lost, or the process died between commit and publish): the pending index;
- keys waiting for an automation a live worker of the fleet has: to that automation's queue;
- effects committed but never published, published long ago and never started, running with a
  heartbeat older than ``effect_stall_after`` (their worker died), or retrying past their time: the
  index of unfinished effects;
- timers that came within the horizon (promoted to ETA tasks) and timers whose time passed with nobody
  firing them: the index of pending timers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, text, update

from garrison.core import fleet
from garrison.core.runtime import Runtime
from garrison.core.timers import overdue, promote
from garrison.core.writes import effect_labels
from garrison.models import EFFECTS, PENDING, TENANTS
from garrison.models.tables import EFFECT_OPEN

log = logging.getLogger("garrison.relay")

__all__ = ["RelayReport", "relay", "tenants"]


@dataclass(slots=True)
class RelayReport:
    keys: dict[str, list[str]] = field(default_factory=dict)
    effects: dict[str, list[int]] = field(default_factory=dict)
    # Per tenant: keys published to the queue of the automation they wait for.
    waiting: dict[str, list[str]] = field(default_factory=dict)
    # Per tenant: timers promoted to ETA tasks (they came within the horizon), and overdue sweeps.
    timers: dict[str, int] = field(default_factory=dict)
    overdue: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return (sum(map(len, self.keys.values())) + sum(map(len, self.effects.values()))
                + sum(map(len, self.waiting.values())) + sum(self.timers.values()) + len(self.overdue))


def tenants(client: Runtime) -> list[str]:
    """Every tenant that ever ingested (a small table; the relay's and beat's loop)."""
    with client.db.session() as s:
        return list(s.execute(select(TENANTS.c.name).order_by(TENANTS.c.name)).scalars())


def relay(client: Runtime, limit: int = 10_000) -> RelayReport:
    """One pass: re-publish what was committed but not dispatched, tenant by tenant."""
    now = client.clock.now()
    settings = client.settings
    report = RelayReport()
    live = [a.name for a in fleet.list_automations(client.db) if a.live(now, settings.automation_ttl)]
    for tenant in tenants(client):
        _relay_tenant(client, tenant, now, live, limit, report)
    if report.total:
        log.info("relay re-published", extra={"keys": sum(map(len, report.keys.values())),
                                               "effects": sum(map(len, report.effects.values())),
                                               "waiting": sum(map(len, report.waiting.values())),
                                               "timers": sum(report.timers.values()),
                                               "overdue": len(report.overdue)})
    return report


def _relay_tenant(client: Runtime, tenant: str, now: datetime, live: list[str], limit: int,
                  report: RelayReport) -> None:
    settings = client.settings
    publisher = client.publisher
    cutoff = now - timedelta(seconds=settings.relay_after)
    with client.db.session() as s:
        keys = fleet.stalled(s, tenant, cutoff, limit)
        waiting = fleet.waiting_for(s, tenant, live, cutoff, limit)
        for group in (keys, [k for k, _ in waiting]):
            if group:
                s.execute(update(PENDING).where(PENDING.c.tenant == tenant, PENDING.c.key.in_(group))
                          .values(published_at=now))
        found = _lost_effects(s, client, tenant, now, cutoff, limit)
        ids = [row.id for row in found]
        if ids:
            s.execute(update(EFFECTS).where(EFFECTS.c.tenant == tenant, EFFECTS.c.id.in_(ids))
                      .values(status="dispatched", dispatched_at=now, heartbeat_at=None))
    if keys:
        report.keys[tenant] = keys
        publisher.publish_keys(tenant, keys)
    by_automation: dict[str, list[str]] = {}
    for key, automation in waiting:
        by_automation.setdefault(automation, []).append(key)
    for automation, group in sorted(by_automation.items()):
        report.waiting.setdefault(tenant, []).extend(group)
        publisher.publish_waiting(tenant, group, automation)
    if ids:
        report.effects[tenant] = ids
        publisher.publish_effects(tenant, ids, effect_labels(ids, found))
    dues = promote(client.db, tenant, now, settings.timer_horizon, limit)
    if dues:
        report.timers[tenant] = len(dues)
        publisher.publish_timers(tenant, dues)
    if overdue(client.db, tenant, cutoff):
        report.overdue.append(tenant)
        publisher.publish_timers(tenant, [now])


def _lost_effects(s: Any, client: Runtime, tenant: str, now: datetime, cutoff: datetime, limit: int) -> list[Any]:
    """Unfinished effects nobody is on: committed and never published, published long ago and never
    started, running with a stale heartbeat (their worker died), or retrying past their time."""
    settings = client.settings
    redispatch = now - timedelta(seconds=settings.effect_redispatch_after)
    stalled = now - timedelta(seconds=settings.effect_stall_after)
    return list(s.execute(
        select(EFFECTS.c.id, EFFECTS.c.automation, EFFECTS.c.key)
        .where(
            EFFECTS.c.tenant == tenant, text(EFFECT_OPEN),
            or_(
                and_(EFFECTS.c.status == "pending", EFFECTS.c.created_at < cutoff),
                and_(EFFECTS.c.status == "dispatched", EFFECTS.c.dispatched_at < redispatch),
                and_(EFFECTS.c.status == "running",
                     or_(EFFECTS.c.heartbeat_at.is_(None), EFFECTS.c.heartbeat_at < stalled)),
                and_(EFFECTS.c.status == "retrying", EFFECTS.c.next_attempt_at < cutoff),
            ),
        )
        .order_by(EFFECTS.c.id)
        .limit(limit)
    ).all())
