"""OpenTelemetry for garrison (the ``otel`` extra, ``GARRISON_TRACING=otel``): one trace per event's way.

``garrison.ingest`` (where the event is ingested) -> the ``garrison.process`` Celery task (its context in the
task headers, see :mod:`garrison.tasks.tracing`) -> ``garrison.apply`` per automation applying the message ->
the ``garrison.effect`` task and the ``garrison.effect.perform`` span of each effect it caused. The ingest
span's context is also stored with the event (its ``trace`` column), and ``garrison.apply`` is its child:
a message applied in a batch of other traces' messages, or re-published by the relay, still joins its own
trace (with a link to the task that applied it).

This module imports OpenTelemetry; nothing imports it unless tracing is on. Configure the SDK (a
``TracerProvider`` and an exporter) yourself, in every process, as for any OpenTelemetry instrumentation.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from opentelemetry import context, propagate, trace

from garrison.core import instrument
from garrison.core.contract import Message
from garrison.core.ingest import EventIn

__all__ = ["OpenTelemetry", "enable"]

TRACER = "garrison"


class OpenTelemetry(instrument.Instrument):
    """garrison's hooks as OpenTelemetry spans."""

    @property
    def tracer(self) -> trace.Tracer:
        return trace.get_tracer(TRACER)

    @contextmanager
    def ingesting(self, events: Sequence[EventIn]) -> Iterator[Sequence[EventIn]]:
        first = events[0] if events else None
        attributes: dict[str, Any] = {"garrison.events": len(events)}
        if first is not None:
            attributes.update({"garrison.tenant": first.tenant, "garrison.event": first.name,
                               "garrison.key": first.key})
        with self.tracer.start_as_current_span("garrison.ingest", kind=trace.SpanKind.PRODUCER,
                                               attributes=attributes):
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            parent = carrier.get("traceparent")
            yield [replace(e, trace=parent) if parent and e.trace is None else e for e in events]

    @contextmanager
    def applying(self, message: Message, automation: str) -> Iterator[None]:
        here = trace.get_current_span().get_span_context()
        parent = propagate.extract({"traceparent": message.trace}) if message.trace else None
        links = [trace.Link(here)] if parent is not None and here.is_valid else []
        attributes: dict[str, Any] = {"garrison.tenant": message.tenant, "garrison.automation": automation,
                      "garrison.key": message.key, "garrison.event": message.name,
                      "garrison.event_id": message.event_id, "garrison.seq": message.seq}
        with self.tracer.start_as_current_span("garrison.apply", context=parent, links=links,
                                               attributes=attributes):
            yield

    @contextmanager
    def performing(self, tenant: str, automation: str, key: str, effect_id: int, kind: str) -> Iterator[None]:
        attributes: dict[str, Any] = {"garrison.tenant": tenant, "garrison.automation": automation, "garrison.key": key,
                      "garrison.effect_id": effect_id, "garrison.effect_kind": kind}
        with self.tracer.start_as_current_span("garrison.effect.perform", attributes=attributes):
            yield


def enable() -> None:
    """Make this process's garrison report to OpenTelemetry (idempotent)."""
    if not isinstance(instrument.current(), OpenTelemetry):
        instrument.use(OpenTelemetry())


def current_context() -> Any:
    """The active OpenTelemetry context (for the Celery hooks)."""
    return context.get_current()
