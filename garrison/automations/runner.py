"""The worker's loop around the engine: process, dispatch effects, go on while more arrived; perform
effects; and the relay that re-publishes whatever was committed but not dispatched (ARCHITECTURE 5)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, exists, or_, select, update

from garrison.automations.base import EffectContext, EffectSpec
from garrison.automations.engine import (
    EFFECTS,
    EVENTS,
    STREAMS,
    BatchResult,
    effect_labels,
    pending_keys,
    processed_seq,
)
from garrison.automations.timers import eta_buckets, fire_due, overdue, promote, timer_tenants
from garrison.client import Garrison
from garrison.errors import NotFound
from garrison.logs import log_context

log = logging.getLogger("garrison.runner")

MAX_ROUNDS = 20
# A bucket's ETA task already published by this process is not published again while it is at least
# this far ahead: when it runs it fires every timer of the tenant due by then, committed before or after.
ETA_MARGIN = 0.5
_published_buckets: dict[tuple[str, datetime], None] = {}
_published_lock = threading.Lock()


@dataclass(slots=True)
class RelayReport:
    keys: dict[str, list[str]] = field(default_factory=dict)
    effects: dict[str, list[int]] = field(default_factory=dict)
    # Per tenant: timers promoted to ETA tasks (they came within the horizon), and overdue sweeps.
    timers: dict[str, int] = field(default_factory=dict)
    overdue: list[str] = field(default_factory=list)
    pulses: list[int] = field(default_factory=list)

    @property
    def total(self) -> int:
        return (sum(map(len, self.keys.values())) + sum(map(len, self.effects.values()))
                + sum(self.timers.values()) + len(self.overdue) + len(self.pulses))


def new_buckets(tenant: str, dues: Sequence[datetime], now: datetime) -> list[datetime]:
    """The ETA buckets of ``dues`` this process has not published yet (or that are too close to trust a
    task published earlier), remembered as published. Keeps 10,000 timers set by 100 batches for the
    same few seconds from becoming thousands of ETA messages."""
    horizon = now + timedelta(seconds=ETA_MARGIN)
    fresh: list[datetime] = []
    with _published_lock:
        for key in [k for k in _published_buckets if k[1] < now]:
            del _published_buckets[key]
        for bucket in eta_buckets(dues):
            if bucket <= horizon or (tenant, bucket) not in _published_buckets:
                fresh.append(bucket)
                _published_buckets[(tenant, bucket)] = None
    return fresh


def forget_buckets(tenant: str, buckets: Sequence[datetime]) -> None:
    with _published_lock:
        for bucket in buckets:
            _published_buckets.pop((tenant, bucket), None)


class Runner:
    """Runs the engine for a client and hands committed effects to its publisher."""

    def __init__(self, client: Garrison) -> None:
        self.client = client

    def run_keys(self, tenant: str, keys: Sequence[str]) -> list[BatchResult]:
        """Apply everything pending for ``keys``, looping while more messages arrive for them. Log lines
        made meanwhile carry the tenant (and the key, when there is one)."""
        with log_context(tenant=tenant, key=keys[0] if len(keys) == 1 else None):
            return self._run_keys(tenant, keys)

    def _run_keys(self, tenant: str, keys: Sequence[str]) -> list[BatchResult]:
        engine = self.client.engine
        results: list[BatchResult] = []
        pending = list(keys)
        for _ in range(MAX_ROUNDS):
            result = engine.process(tenant, pending)
            results.append(result)
            self.dispatch_effects(tenant, result.effect_ids, result.effect_labels)
            self.dispatch_timers(tenant, result.timer_dues)
            pending = engine.pending(tenant, set(pending) | result.woken)
            if not pending:
                return results
        # A very hot key set: hand the rest to another task rather than hog this worker.
        self.client.publisher.publish_keys(tenant, pending)
        return results

    def dispatch_effects(
        self, tenant: str, effect_ids: Sequence[int], labels: Mapping[int, str] | None = None
    ) -> None:
        if not effect_ids:
            return
        try:
            self.client.publisher.publish_effects(tenant, effect_ids, labels)
        except Exception:
            log.warning("effect publish failed", exc_info=True, extra={"tenant": tenant})
            return
        now = self.client.clock.now()
        with self.client.db.session() as s:
            s.execute(
                update(EFFECTS)
                .where(EFFECTS.c.tenant == tenant, EFFECTS.c.id.in_(list(effect_ids)), EFFECTS.c.status == "pending")
                .values(status="dispatched", dispatched_at=now)
            )

    def dispatch_timers(self, tenant: str, dues: Sequence[datetime]) -> None:
        """Publish ETA tasks for timers just committed within the horizon. Best-effort: a timer whose
        message is lost is fired by the relay's overdue sweep."""
        if not dues:
            return
        fresh = new_buckets(tenant, dues, self.client.clock.now())
        if not fresh:
            return
        try:
            self.client.publisher.publish_timers(tenant, fresh)
        except Exception:
            forget_buckets(tenant, fresh)
            log.warning("timer publish failed; the relay will fire them", exc_info=True, extra={"tenant": tenant})

    def fire_timers(self, tenant: str) -> int:
        """Fire every timer of ``tenant`` due now (claim + ingest its event), then apply the woken keys:
        inline when they are few, else as ``garrison.process`` tasks for the fleet. Returns how many fired."""
        with log_context(tenant=tenant):
            return self._fire_timers(tenant)

    def _fire_timers(self, tenant: str) -> int:
        settings = self.client.settings
        total = 0
        while True:
            fired = fire_due(self.client.db, tenant, self.client.clock.now(), settings.engine_batch)
            total += len(fired)
            keys = sorted({e.key for e in fired if not e.duplicate})
            if len(keys) > settings.publish_batch:
                try:
                    self.client.publisher.publish_keys(tenant, keys)
                except Exception:
                    log.warning("publish failed; the relay will pick these keys up", exc_info=True)
            elif keys:
                self.run_keys(tenant, keys)
            if len(fired) < settings.engine_batch:
                if total:
                    log.info("timers fired", extra={"tenant": tenant, "timers": total})
                return total

    def run_pulse(
        self, tenant: str, slot_id: int, chunk: int = 1000, progress: Callable[[int, int | None], None] | None = None
    ) -> int:
        """Fan an opened pulse slot out page by page (each page one transaction), waking each page's keys.
        Safe to run twice at once or again after a crash: pages resume from the slot's committed cursor.
        ``progress(done, total)`` is called after each page."""
        from garrison.automations.pulses import fan_out_chunk, slot_progress

        sent = 0
        with log_context(tenant=tenant, slot_id=slot_id):
            while True:
                events = fan_out_chunk(self.client.db, tenant, slot_id, self.client.clock.now(), chunk)
                if events is None:
                    return sent
                sent += len(events)
                if events:
                    self.client.wake(events)
                if progress is not None:
                    progress(*slot_progress(self.client.db, tenant, slot_id))

    def perform_effect(self, tenant: str, effect_id: int, *, final_attempt: bool = True) -> bool:
        """Perform one effect unless it is done already. Returns True when it ran now."""
        db = self.client.db
        with db.session() as s:
            row = s.execute(
                select(EFFECTS).where(EFFECTS.c.tenant == tenant, EFFECTS.c.id == effect_id)
            ).mappings().first()
        if row is None:
            raise NotFound("no such effect", tenant=tenant, effect_id=effect_id)
        if row["status"] == "done":
            return False
        automation = self.client.registry.get(row["automation"])
        ctx = EffectContext(
            tenant=tenant, automation=row["automation"], key=row["key"], effect_id=effect_id,
            idempotency_key=f"{tenant}:effect:{effect_id}", client=self.client, final_attempt=final_attempt,
        )
        try:
            with log_context(tenant=tenant, automation=row["automation"], key=row["key"], effect_id=effect_id):
                automation.perform(EffectSpec(row["kind"], row["payload"]), ctx)
        except Exception as exc:
            with db.session() as s:
                s.execute(
                    update(EFFECTS)
                    .where(EFFECTS.c.tenant == tenant, EFFECTS.c.id == effect_id)
                    .values(
                        attempts=EFFECTS.c.attempts + 1,
                        error=f"{type(exc).__name__}: {exc}",
                        status="failed" if final_attempt else EFFECTS.c.status,
                    )
                )
            raise
        with db.session() as s:
            s.execute(
                update(EFFECTS)
                .where(EFFECTS.c.tenant == tenant, EFFECTS.c.id == effect_id)
                .values(status="done", done_at=self.client.clock.now(), attempts=EFFECTS.c.attempts + 1, error=None)
            )
        return True

    def relay(self, limit: int = 10_000) -> RelayReport:
        """Re-publish keys whose next message has waited longer than ``relay_after``, and effects
        committed but not published (or published long ago and never finished)."""
        settings = self.client.settings
        now = self.client.clock.now()
        cutoff = now - timedelta(seconds=settings.relay_after)
        redispatch = now - timedelta(seconds=settings.effect_redispatch_after)
        report = RelayReport()
        labels: dict[int, str] = {}
        publisher = self.client.publisher
        db = self.client.db
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
        self._relay_timers(report, now, limit)
        self._relay_pulses(report, cutoff)
        if report.total:
            log.info("relay re-published", extra={"keys": sum(map(len, report.keys.values())),
                                                   "effects": sum(map(len, report.effects.values())),
                                                   "timers": sum(report.timers.values()),
                                                   "overdue": len(report.overdue)})
        return report

    def _relay_pulses(self, report: RelayReport, cutoff: datetime) -> None:
        """Re-publish pulse slots still running but untouched since ``cutoff`` (their task was lost, or
        the beat died between opening a slot and publishing it)."""
        from garrison.models.pulses import PULSE_SLOTS

        db = self.client.db
        with db.session() as s:
            tenants = set(s.execute(
                select(PULSE_SLOTS.c.tenant).where(PULSE_SLOTS.c.status == "running").distinct()
            ).scalars())
            stalled = [
                (tenant, row.id, f"{row.schedule}@{row.slot}")
                for tenant in sorted(tenants)
                for row in s.execute(
                    select(PULSE_SLOTS.c.id, PULSE_SLOTS.c.schedule, PULSE_SLOTS.c.slot).where(
                        PULSE_SLOTS.c.tenant == tenant, PULSE_SLOTS.c.status == "running",
                        PULSE_SLOTS.c.updated_at < cutoff,
                    )
                )
            ]
        for tenant, slot_id, label in stalled:
            report.pulses.append(slot_id)
            self.client.publisher.publish_pulse(tenant, slot_id, label)

    def _relay_timers(self, report: RelayReport, now: datetime, limit: int) -> None:
        """Promote timers that came within the horizon to ETA tasks; sweep timers whose time passed more
        than ``relay_after`` ago (their ETA message was lost, or no worker ran when they came due)."""
        settings = self.client.settings
        db = self.client.db
        publisher = self.client.publisher
        late = now - timedelta(seconds=settings.relay_after)
        for tenant in sorted(timer_tenants(db)):
            dues = promote(db, tenant, now, settings.timer_horizon, limit)
            if dues:
                report.timers[tenant] = len(dues)
                publisher.publish_timers(tenant, dues)
            if overdue(db, tenant, late):
                report.overdue.append(tenant)
                publisher.publish_timers(tenant, [now])

    def run_pending(self, tenant: str | None = None, *, effects: bool = True) -> int:
        """Without any worker: fire the timers due by the client's clock, apply every pending message of a
        tenant and perform its effects inline, until nothing is left. Returns the number of messages
        applied. For tests (with a :class:`~garrison.clock.FrozenClock`), scripts and replay."""
        tenant = self.client.tenant_of(tenant)
        with log_context(tenant=tenant):
            return self._run_pending(tenant, effects)

    def _run_pending(self, tenant: str, effects: bool) -> int:
        engine = self.client.engine
        total = 0
        while True:
            fired = fire_due(self.client.db, tenant, self.client.clock.now(), self.client.settings.engine_batch)
            with self.client.db.session() as s:
                keys = list(s.execute(pending_keys(tenant).limit(self.client.settings.publish_batch)).scalars())
                effect_ids = list(
                    s.execute(
                        select(EFFECTS.c.id)
                        .where(EFFECTS.c.tenant == tenant, EFFECTS.c.status.in_(("pending", "dispatched")))
                        .order_by(EFFECTS.c.id)
                    ).scalars()
                ) if effects else []
            if not keys and not effect_ids and not fired:
                return total
            if keys:
                total += engine.process(tenant, keys).messages
            for effect_id in effect_ids:
                self.perform_effect(tenant, effect_id)
