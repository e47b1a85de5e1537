"""The worker's loop around the engine: process, dispatch effects, go on while more arrived; perform
effects; and the relay that re-publishes whatever was committed but not dispatched (ARCHITECTURE 5)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import and_, exists, or_, select, update

from garrison.automations.base import EffectContext, EffectSpec
from garrison.automations.engine import EFFECTS, EVENTS, STREAMS, BatchResult, pending_keys, processed_seq
from garrison.client import Garrison
from garrison.errors import NotFound

log = logging.getLogger("garrison.runner")

MAX_ROUNDS = 20


@dataclass(slots=True)
class RelayReport:
    keys: dict[str, list[str]] = field(default_factory=dict)
    effects: dict[str, list[int]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(map(len, self.keys.values())) + sum(map(len, self.effects.values()))


class Runner:
    """Runs the engine for a client and hands committed effects to its publisher."""

    def __init__(self, client: Garrison) -> None:
        self.client = client

    def run_keys(self, tenant: str, keys: Sequence[str]) -> list[BatchResult]:
        """Apply everything pending for ``keys``, looping while more messages arrive for them."""
        engine = self.client.engine
        results: list[BatchResult] = []
        pending = list(keys)
        for _ in range(MAX_ROUNDS):
            result = engine.process(tenant, pending)
            results.append(result)
            self.dispatch_effects(tenant, result.effect_ids)
            pending = engine.pending(tenant, pending)
            if not pending:
                return results
        # A very hot key set: hand the rest to another task rather than hog this worker.
        self.client.publisher.publish_keys(tenant, pending)
        return results

    def dispatch_effects(self, tenant: str, effect_ids: Sequence[int]) -> None:
        if not effect_ids:
            return
        try:
            self.client.publisher.publish_effects(tenant, effect_ids)
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
            idempotency_key=f"{tenant}:effect:{effect_id}", client=self.client,
        )
        try:
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
                ids = list(
                    s.execute(
                        select(EFFECTS.c.id)
                        .where(
                            EFFECTS.c.tenant == tenant,
                            or_(
                                and_(EFFECTS.c.status == "pending", EFFECTS.c.created_at < cutoff),
                                and_(EFFECTS.c.status == "dispatched", EFFECTS.c.dispatched_at < redispatch),
                            ),
                        )
                        .order_by(EFFECTS.c.id)
                        .limit(limit)
                    ).scalars()
                )
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
            publisher.publish_effects(tenant, ids)
        if report.total:
            log.info("relay re-published", extra={"keys": sum(map(len, report.keys.values())),
                                                   "effects": sum(map(len, report.effects.values()))})
        return report

    def run_pending(self, tenant: str | None = None, *, effects: bool = True) -> int:
        """Without any worker: apply every pending message of a tenant and perform its effects inline,
        until nothing is left. Returns the number of messages applied. For tests, scripts and replay."""
        tenant = self.client.tenant_of(tenant)
        engine = self.client.engine
        total = 0
        while True:
            with self.client.db.session() as s:
                keys = list(s.execute(pending_keys(tenant).limit(self.client.settings.publish_batch)).scalars())
                effect_ids = list(
                    s.execute(
                        select(EFFECTS.c.id)
                        .where(EFFECTS.c.tenant == tenant, EFFECTS.c.status.in_(("pending", "dispatched")))
                        .order_by(EFFECTS.c.id)
                    ).scalars()
                ) if effects else []
            if not keys and not effect_ids:
                return total
            if keys:
                total += engine.process(tenant, keys).messages
            for effect_id in effect_ids:
                self.perform_effect(tenant, effect_id)
