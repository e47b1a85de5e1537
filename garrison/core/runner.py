"""The worker's loop around the engine: process (claiming other pending keys, so single events are
applied in batches), dispatch effects and timers, go on while more arrived; perform effects, one entity's
in order, with a heartbeat; fire due timers; and, with no worker at all, run everything pending inline."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, text, update

from garrison.clock import as_utc
from garrison.core import instrument
from garrison.core.contract import EffectContext, EffectSpec
from garrison.core.engine import BatchResult
from garrison.core.heartbeat import beating
from garrison.core.publisher import EffectAbout
from garrison.core.runtime import Runtime
from garrison.core.timers import fire_due
from garrison.errors import NotFound
from garrison.logs import log_context
from garrison.models import EFFECTS, PENDING
from garrison.models.tables import EFFECT_OPEN

log = logging.getLogger("garrison.runner")

MAX_ROUNDS = 20


class Runner:
    """Runs the engine for a client and hands committed effects to its publisher."""

    def __init__(self, client: Runtime) -> None:
        self.client = client

    def run_keys(self, tenant: str, keys: Sequence[str]) -> list[BatchResult]:
        """Apply everything pending for ``keys`` (and other pending keys of the tenant it can take), looping
        while more messages arrive for them. Log lines made meanwhile carry the tenant (and the key)."""
        with log_context(tenant=tenant, key=keys[0] if len(keys) == 1 else None):
            return self._run_keys(tenant, keys)

    def _run_keys(self, tenant: str, keys: Sequence[str]) -> list[BatchResult]:
        engine = self.client.engine
        results: list[BatchResult] = []
        pending = list(keys)
        for _ in range(MAX_ROUNDS):
            result = engine.process(tenant, pending, claim=self.client.settings.claim_batch)
            results.append(result)
            self.dispatch(tenant, result)
            # What the batch left (a cut read, events ingested meanwhile) and the keys it sent events to.
            pending = sorted(result.again | result.woken)
            if not pending:
                return results
        # A very hot key set: hand the rest to another task rather than hog this worker.
        self.client.publisher.publish_keys(tenant, pending)
        return results

    def dispatch(self, tenant: str, result: BatchResult) -> None:
        """After a batch's commit: its effects, its timers' ETA tasks, and the keys that now wait for an
        automation this process lacks (to that automation's queue)."""
        self.dispatch_effects(tenant, result.effect_ids, result.effect_labels)
        self.dispatch_timers(tenant, result.timer_dues)
        by_automation: dict[str, list[str]] = {}
        for key, automation in result.needs.items():
            by_automation.setdefault(automation, []).append(key)
        for automation, keys in sorted(by_automation.items()):
            log.info("keys wait for an automation this worker does not have",
                     extra={"tenant": tenant, "automation": automation, "keys": len(keys)})
            try:
                self.client.publisher.publish_waiting(tenant, sorted(keys), automation)
            except Exception:
                log.warning("publish failed; the relay will pick these keys up", exc_info=True)

    def dispatch_effects(
        self, tenant: str, effect_ids: Sequence[int], labels: Mapping[int, EffectAbout] | None = None
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
        fresh = self.client.timer_buckets.fresh(tenant, dues, self.client.clock.now())
        if not fresh:
            return
        try:
            self.client.publisher.publish_timers(tenant, fresh)
        except Exception:
            self.client.timer_buckets.forget(tenant, fresh)
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

    # -- effects --------------------------------------------------------------------------------

    def perform_effect(
        self, tenant: str, effect_id: int, *, final_attempt: bool = True, retry_at: datetime | None = None
    ) -> bool:
        """Perform one effect unless it is finished, running elsewhere, or (for an automation whose effects
        run in order) waiting for an earlier effect of its entity. Returns True when it ran now.

        While it runs it beats ``heartbeat_at``, so the relay never starts it twice while it is alive, and
        starts it again soon after its worker died. When it raises and this is not ``final_attempt`` it
        waits as ``retrying`` until ``retry_at``; when it finishes (done, or failed for good) the entity's
        next effect is published."""
        with log_context(tenant=tenant, effect_id=effect_id):
            row = self._claim(tenant, effect_id)
            if row is None:
                return False
            automation = self.client.registry.get(row["automation"])
            ctx = EffectContext(
                tenant=tenant, automation=row["automation"], key=row["key"], effect_id=effect_id,
                idempotency_key=f"{tenant}:effect:{effect_id}", client=self.client, final_attempt=final_attempt,
            )
            try:
                with log_context(automation=row["automation"], key=row["key"]), \
                        beating(lambda: self._beat(tenant, effect_id), self.client.settings.effect_heartbeat), \
                        instrument.current().performing(tenant, row["automation"], row["key"], effect_id, row["kind"]):
                    automation.perform(EffectSpec(row["kind"], row["payload"]), ctx)
            except Exception as exc:
                self._finish(tenant, row, "failed" if final_attempt else "retrying", f"{type(exc).__name__}: {exc}",
                             retry_at)
                raise
            self._finish(tenant, row, "done", None, None)
            return True

    def _claim(self, tenant: str, effect_id: int) -> Any:
        settings = self.client.settings
        now = self.client.clock.now()
        with self.client.db.session() as s:
            query = select(EFFECTS).where(EFFECTS.c.tenant == tenant, EFFECTS.c.id == effect_id)
            if self.client.db.dialect == "postgresql":
                query = query.with_for_update()
            row = s.execute(query).mappings().first()
            if row is None:
                raise NotFound("no such effect", tenant=tenant, effect_id=effect_id)
            if row["status"] in ("done", "failed"):
                return None
            beat = row["heartbeat_at"]
            if row["status"] == "running" and beat is not None and as_utc(beat) > now - timedelta(
                    seconds=settings.effect_stall_after):
                return None  # alive on another worker
            if self.client.registry.get(row["automation"]).effects == "entity" and self._earlier(s, row) is not None:
                return None  # the entity's earlier effect hands over to this one when it finishes
            s.execute(
                update(EFFECTS).where(EFFECTS.c.tenant == tenant, EFFECTS.c.id == effect_id)
                .values(status="running", heartbeat_at=now, attempts=EFFECTS.c.attempts + 1)
            )
        return row

    def _earlier(self, s: Any, row: Any) -> Any:
        return s.execute(
            select(EFFECTS.c.id).where(
                EFFECTS.c.tenant == row["tenant"], EFFECTS.c.automation == row["automation"],
                EFFECTS.c.key == row["key"], EFFECTS.c.id < row["id"], text(EFFECT_OPEN),
            ).limit(1)
        ).scalar()

    def _beat(self, tenant: str, effect_id: int) -> None:
        with self.client.db.session() as s:
            s.execute(update(EFFECTS).where(EFFECTS.c.tenant == tenant, EFFECTS.c.id == effect_id,
                                            EFFECTS.c.status == "running")
                      .values(heartbeat_at=self.client.clock.now()))

    def _finish(
        self, tenant: str, row: Any, status: str, error: str | None, retry_at: datetime | None
    ) -> None:
        now = self.client.clock.now()
        values: dict[str, Any] = {"status": status, "error": error, "heartbeat_at": None}
        if status == "done":
            values["done_at"] = now
        if status == "retrying":
            values["next_attempt_at"] = retry_at or now
        with self.client.db.session() as s:
            s.execute(update(EFFECTS).where(EFFECTS.c.tenant == tenant, EFFECTS.c.id == row["id"]).values(**values))
            following = None
            if status != "retrying" and self.client.registry.get(row["automation"]).effects == "entity":
                following = s.execute(
                    select(EFFECTS.c.id).where(
                        EFFECTS.c.tenant == tenant, EFFECTS.c.automation == row["automation"],
                        EFFECTS.c.key == row["key"], EFFECTS.c.id > row["id"], text(EFFECT_OPEN),
                    ).order_by(EFFECTS.c.id).limit(1)
                ).scalar()
        if following is not None:
            about = EffectAbout(row["automation"], row["key"])
            self.dispatch_effects(tenant, [following], {following: about})
            with self.client.db.session() as s:
                s.execute(update(EFFECTS).where(EFFECTS.c.tenant == tenant, EFFECTS.c.id == following,
                                                EFFECTS.c.status == "dispatched").values(dispatched_at=now))

    # -- no worker ----------------------------------------------------------------------------

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
                rows = s.execute(
                    select(PENDING.c.key, PENDING.c.needs).where(PENDING.c.tenant == tenant)
                    .order_by(PENDING.c.since, PENDING.c.key).limit(self.client.settings.publish_batch)
                ).all()
                effect_ids = list(
                    s.execute(
                        select(EFFECTS.c.id)
                        .where(EFFECTS.c.tenant == tenant, text(EFFECT_OPEN))
                        .order_by(EFFECTS.c.id)
                    ).scalars()
                ) if effects else []
            keys = [r.key for r in rows if r.needs is None or r.needs in self.client.registry]
            if not keys and not effect_ids and not fired:
                return total
            if keys:
                total += engine.process(tenant, keys).messages
            for effect_id in effect_ids:
                self.perform_effect(tenant, effect_id)

