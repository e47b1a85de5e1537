"""How committed work reaches a worker. The engine and ingest only see this protocol; the Celery
implementation lives in ``garrison.tasks``. Publishing is best-effort by design: the relay finds
anything committed whose message was lost."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import NamedTuple, Protocol


class EffectAbout(NamedTuple):
    """What an effect is about: its automation (only a worker that has it can perform it, so its task goes
    to that automation's queue) and its key (shown in Flower with the task)."""

    automation: str
    key: str

    def __str__(self) -> str:
        return f"{self.automation} key={self.key}"


class Publisher(Protocol):
    def publish_keys(self, tenant: str, keys: Sequence[str]) -> None:
        """Ask a worker to process the pending messages of these keys."""

    def publish_waiting(self, tenant: str, keys: Sequence[str], automation: str) -> None:
        """Ask a worker that has ``automation`` to process these keys: an entity of it waits in each."""

    def publish_effects(
        self, tenant: str, effect_ids: Sequence[int], labels: Mapping[int, EffectAbout] | None = None
    ) -> None:
        """Ask a worker to perform these committed effects; ``labels`` say what each is about (its task goes
        to its automation's queue, and shows the automation and key, e.g. in Flower)."""

    def publish_timers(self, tenant: str, dues: Sequence[datetime]) -> None:
        """Ask a worker to fire the tenant's due timers at each of these times (ETA tasks)."""

    def publish_pulse(self, tenant: str, slot_id: int, label: str) -> None:
        """Ask a worker to fan an opened pulse slot out to its entities."""


class NullPublisher:
    """Publishes nothing: the relay (or an explicit ``run_pending``) picks the work up."""

    def publish_keys(self, tenant: str, keys: Sequence[str]) -> None:
        return None

    def publish_waiting(self, tenant: str, keys: Sequence[str], automation: str) -> None:
        return None

    def publish_effects(
        self, tenant: str, effect_ids: Sequence[int], labels: Mapping[int, EffectAbout] | None = None
    ) -> None:
        return None

    def publish_timers(self, tenant: str, dues: Sequence[datetime]) -> None:
        return None

    def publish_pulse(self, tenant: str, slot_id: int, label: str) -> None:
        return None
