"""What an actor's ``save`` returns: each event it ingested with its outcome, and the committed snapshot
(:mod:`garrison.automations.statecharts.actors`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["SaveResult", "SentEvent"]


@dataclass(frozen=True, slots=True)
class SentEvent:
    """One event an actor saved, and what applying it did: ``applied``, ``ignored`` or ``failed``.
    ``duplicate``: its idempotency key was seen before, so this is the first event's outcome."""

    name: str
    data: dict[str, Any]
    idempotency_key: str
    event_id: int
    status: str
    duplicate: bool = False
    error: str | None = None
    failure_id: int | None = None


@dataclass(slots=True)
class SaveResult:
    """What ``save`` did: the events it ingested, each with its outcome, and the committed snapshot."""

    snapshot: dict[str, Any] | None
    events: list[SentEvent] = field(default_factory=list)

    def _with(self, status: str) -> list[SentEvent]:
        return [e for e in self.events if e.status == status]

    @property
    def applied(self) -> list[SentEvent]:
        return self._with("applied")

    @property
    def ignored(self) -> list[SentEvent]:
        return self._with("ignored")

    @property
    def failed(self) -> list[SentEvent]:
        return self._with("failed")
