"""Observability hooks: where garrison tells a tracer what it is doing. Do-nothing by default.

Three moments, each a context manager around the work (dramatiq's middleware in spirit, kept to what
tracing needs): ``ingesting`` a batch of events (it may hand back the events stamped with a trace
context, stored in the event's ``trace`` column so that applying it later joins the same trace),
``applying`` one message to one automation, and ``performing`` one effect. ``use`` installs an
instrument for the process; :mod:`garrison.ops.tracing` is the OpenTelemetry one (``GARRISON_TRACING=otel``).
The default imports nothing and costs a function call.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from garrison.core.contract import Message
    from garrison.core.ingest import EventIn

__all__ = ["Instrument", "current", "use"]


class Instrument:
    """The hooks, doing nothing. Subclass and override what you observe."""

    @contextmanager
    def ingesting(self, events: Sequence[EventIn]) -> Iterator[Sequence[EventIn]]:
        """Around writing (and publishing) ``events``; yields the events to write."""
        yield events

    @contextmanager
    def applying(self, message: Message, automation: str) -> Iterator[None]:
        """Around one automation's ``apply`` of one message (in the engine's transaction)."""
        yield

    @contextmanager
    def performing(self, tenant: str, automation: str, key: str, effect_id: int, kind: str) -> Iterator[None]:
        """Around performing one committed effect (a listener, a command, a step)."""
        yield


_current = Instrument()


def current() -> Instrument:
    return _current


def use(instrument: Instrument | None) -> Instrument:
    """Install ``instrument`` for this process (None: the do-nothing one). Returns the previous one."""
    global _current
    previous, _current = _current, instrument or Instrument()
    return previous
