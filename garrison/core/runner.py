"""The worker's loop around the engine: process, dispatch effects, go on while more arrived; perform
effects; fire due timers; and, with no worker at all, run everything pending inline."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlalchemy import select, update

from garrison.core import instrument
from garrison.core.contract import EffectContext, EffectSpec
from garrison.core.engine import BatchResult, pending_keys
from garrison.core.runtime import Runtime
from garrison.core.timers import fire_due
from garrison.errors import NotFound
from garrison.logs import log_context
from garrison.models import EFFECTS

log = logging.getLogger("garrison.runner")

MAX_ROUNDS = 20


class Runner:
    """Runs the engine for a client and hands committed effects to its publisher."""

    def __init__(self, client: Runtime) -> None:
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
            with log_context(tenant=tenant, automation=row["automation"], key=row["key"], effect_id=effect_id), \
                    instrument.current().performing(tenant, row["automation"], row["key"], effect_id, row["kind"]):
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
