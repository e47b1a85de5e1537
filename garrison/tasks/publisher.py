"""Publishes garrison's work as Celery tasks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import cached_property

from celery import Celery

from garrison.config import Settings
from garrison.core.publisher import EffectAbout
from garrison.core.timers import eta_buckets
from garrison.tasks.app import automation_queue, create_celery


class CeleryPublisher:
    """Sends ``garrison.process`` (a batch of keys), ``garrison.effect`` (one effect) and
    ``garrison.timers`` (an ETA task that fires due timers) tasks."""

    def __init__(self, settings: Settings, app: Celery | None = None) -> None:
        self.settings = settings
        self._app = app

    @cached_property
    def app(self) -> Celery:
        if self._app is not None:
            return self._app
        return create_celery(self.settings)

    def publish_keys(self, tenant: str, keys: Sequence[str]) -> None:
        self._process(tenant, keys, self.settings.queue)

    def publish_waiting(self, tenant: str, keys: Sequence[str], automation: str) -> None:
        """Keys an entity of ``automation`` waits in go to that automation's queue: only a worker that has
        it takes them (a rolling deploy: the old and the new version of the fleet side by side)."""
        self._process(tenant, keys, automation_queue(self.settings, automation))

    def _process(self, tenant: str, keys: Sequence[str], queue: str) -> None:
        size = self.settings.publish_batch
        with self.app.producer_or_acquire() as producer:
            for start in range(0, len(keys), size):
                chunk = list(keys[start : start + size])
                self.app.send_task(
                    "garrison.process", args=[tenant, chunk], argsrepr=_describe(tenant, chunk), queue=queue,
                    producer=producer,
                )

    def publish_effects(
        self, tenant: str, effect_ids: Sequence[int], labels: Mapping[int, EffectAbout] | None = None
    ) -> None:
        """Each effect to its automation's queue: only a worker that has the automation can perform it."""
        labels = labels or {}
        with self.app.producer_or_acquire() as producer:
            for effect_id in effect_ids:
                about = labels.get(effect_id)
                queue = self.settings.queue if about is None else automation_queue(self.settings, about.automation)
                self.app.send_task(
                    "garrison.effect",
                    args=[tenant, effect_id],
                    argsrepr=f"tenant={tenant} effect={effect_id}" + ("" if about is None else f" {about}"),
                    queue=queue,
                    producer=producer,
                )

    def publish_timers(self, tenant: str, dues: Sequence[datetime]) -> None:
        """One ``garrison.timers`` ETA task per 100 ms bucket of due times: it fires every timer of the
        tenant due by then, so many timers due together cost few messages."""
        with self.app.producer_or_acquire() as producer:
            for eta in eta_buckets(dues):
                self.app.send_task(
                    "garrison.timers",
                    args=[tenant, eta.isoformat()],
                    eta=eta,
                    argsrepr=f"tenant={tenant} due={eta.isoformat()}",
                    queue=self.settings.queue,
                    producer=producer,
                )

    def publish_pulse(self, tenant: str, slot_id: int, label: str) -> None:
        self.app.send_task("garrison.pulse", args=[tenant, slot_id], argsrepr=f"tenant={tenant} pulse={label}",
                           queue=self.settings.queue)


def _describe(tenant: str, keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:5]) + (f", ... ({len(keys)} keys)" if len(keys) > 5 else "")
    return f"tenant={tenant} keys=[{shown}]"
