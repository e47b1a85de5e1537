"""How committed work reaches a worker. The engine and ingest only see this protocol; the Celery
implementation lives in ``garrison.tasks``. Publishing is best-effort by design: the relay finds
anything committed whose message was lost."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Protocol


class Publisher(Protocol):
    def publish_keys(self, tenant: str, keys: Sequence[str]) -> None:
        """Ask a worker to process the pending messages of these keys."""

    def publish_effects(
        self, tenant: str, effect_ids: Sequence[int], labels: Mapping[int, str] | None = None
    ) -> None:
        """Ask a worker to perform these committed effects; ``labels`` say what each is about (shown in
        the task's arguments, e.g. in Flower)."""

    def publish_timers(self, tenant: str, dues: Sequence[datetime]) -> None:
        """Ask a worker to fire the tenant's due timers at each of these times (ETA tasks)."""

    def publish_pulse(self, tenant: str, slot_id: int, label: str) -> None:
        """Ask a worker to fan an opened pulse slot out to its entities."""


class NullPublisher:
    """Publishes nothing: the relay (or an explicit ``run_pending``) picks the work up."""

    def publish_keys(self, tenant: str, keys: Sequence[str]) -> None:
        return None

    def publish_effects(
        self, tenant: str, effect_ids: Sequence[int], labels: Mapping[int, str] | None = None
    ) -> None:
        return None

    def publish_timers(self, tenant: str, dues: Sequence[datetime]) -> None:
        return None

    def publish_pulse(self, tenant: str, slot_id: int, label: str) -> None:
        return None
