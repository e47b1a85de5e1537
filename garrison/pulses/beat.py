"""The pulse side of beat: each tick, the beat that holds the fleet's lease opens the slots that came due.

Schedules live in SQL (``garrison_schedules``): the ones defined in code (``@machine.pulse``) are synced
there for every tenant (when the beat becomes leader, and for a new tenant on the tick after its first
event, through the tenants table), and the ones added at run time are read on every tick, so a new
schedule fires without a restart.
For each due schedule the missed-slot policy decides which slots fire; each is opened with
:func:`~garrison.pulses.fanout.open_slot` (a unique row per schedule and slot: two beats cannot both
open one) and handed to a worker as a ``garrison.pulse`` task. Only the lease holder ticks, so a second
beat idles until the first stops renewing, then takes over within the lease's TTL.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select, update

from garrison.clock import as_utc
from garrison.core.leases import acquire, new_owner
from garrison.core.runtime import Runtime
from garrison.models import TENANTS
from garrison.models.pulses import SCHEDULES
from garrison.pulses.fanout import open_slot, save_schedule, schedule_values, spec_of
from garrison.pulses.schedules import PulseSchedule

log = logging.getLogger("garrison.beat")

FLEET = "_fleet"  # the tenant scope of fleet-wide rows (the beat lease)
LEASE = "beat"
LEASE_TTL = 10.0


@dataclass(slots=True)
class TickReport:
    leader: bool = False
    opened: list[tuple[str, str, datetime]] = field(default_factory=list)
    skipped_missed: int = 0


class PulseBeat:
    """What a beat process does for pulses; the Celery scheduler calls :meth:`tick` every second."""

    def __init__(self, client: Runtime, owner: str | None = None, ttl: float = LEASE_TTL) -> None:
        self.client = client
        self.owner = owner or new_owner("beat")
        self.ttl = ttl
        # The highest garrison_tenants id whose tenant has the code's pulses (None: none synced yet).
        self._tenant_mark: int | None = None

    def tick(self) -> TickReport:
        report = TickReport()
        now = self.client.clock.now()
        if acquire(self.client.db, FLEET, LEASE, self.owner, self.ttl, now) is None:
            return report
        report.leader = True
        self.sync_code_schedules(now)
        for tenant in self._tenants():
            self._tenant_tick(tenant, now, report)
        return report

    def sync_code_schedules(self, now: datetime) -> None:
        """Store the pulses defined in code for the tenants that have not got them yet: every tenant (and
        the default one) the first time, then each new tenant (read through the tenants table's id, so a
        tick costs one indexed read), without touching a paused flag or the next slot an existing row has."""
        specs = [p for automation in self.client.registry for p in getattr(automation, "pulses", ())]
        if not specs:
            return
        with self.client.db.session() as s:
            rows = s.execute(
                select(TENANTS.c.id, TENANTS.c.name).where(TENANTS.c.id > (self._tenant_mark or 0))
                .order_by(TENANTS.c.id)
            ).all()
        tenants = {r.name for r in rows}
        if self._tenant_mark is None:
            tenants.add(self.client.settings.tenant)
        for tenant in sorted(tenants):
            for spec in specs:
                self._sync_one(tenant, spec, now)
        self._tenant_mark = max([self._tenant_mark or 0, *(r.id for r in rows)])

    def _sync_one(self, tenant: str, spec: PulseSchedule, now: datetime) -> None:
        with self.client.db.session() as s:
            row = s.execute(
                select(SCHEDULES.c.id, SCHEDULES.c.source)
                .where(SCHEDULES.c.tenant == tenant, SCHEDULES.c.name == spec.name)
            ).first()
            if row is not None:
                if row.source == "code":
                    s.execute(update(SCHEDULES).where(SCHEDULES.c.tenant == tenant, SCHEDULES.c.id == row.id)
                              .values(**schedule_values(spec), updated_at=now))
                return  # a schedule of that name added at run time wins over code
        save_schedule(self.client.db, tenant, spec, now, source="code")

    def _tenants(self) -> list[str]:
        with self.client.db.session() as s:
            return sorted(s.execute(select(SCHEDULES.c.tenant).where(SCHEDULES.c.paused.is_(False)).distinct())
                          .scalars())

    def _tenant_tick(self, tenant: str, now: datetime, report: TickReport) -> None:
        with self.client.db.session() as s:
            due = s.execute(
                select(SCHEDULES).where(
                    SCHEDULES.c.tenant == tenant, SCHEDULES.c.paused.is_(False), SCHEDULES.c.next_slot <= now,
                ).order_by(SCHEDULES.c.next_slot)
            ).all()
        for row in due:
            spec = spec_of(row)
            plan = spec.due(as_utc(row.next_slot) - timedelta(microseconds=1), now)
            for slot in plan.fire:
                opened = open_slot(self.client.db, tenant, row.id, slot, now)
                if opened is None:
                    continue  # opened already (by a beat that died before moving next_slot on)
                report.opened.append((tenant, row.name, slot))
                if opened.status == "running":
                    self.client.publisher.publish_pulse(tenant, opened.id, f"{row.name}@{slot.isoformat()}")
                else:
                    log.warning("pulse slot skipped", extra={"tenant": tenant, "pulse": row.name,
                                                              "slot": slot.isoformat(), "reason": opened.reason})
            if plan.skipped:
                report.skipped_missed += plan.skipped
                log.warning("missed pulse slots not fired", extra={"tenant": tenant, "pulse": row.name,
                                                                     "skipped": plan.skipped, "policy": spec.missed})
            with self.client.db.session() as s:
                s.execute(update(SCHEDULES).where(SCHEDULES.c.tenant == tenant, SCHEDULES.c.id == row.id)
                          .values(next_slot=plan.next_slot, updated_at=now))


def code_pulses(automations: Iterable[object]) -> list[PulseSchedule]:
    return [p for a in automations for p in getattr(a, "pulses", ())]
