"""The Celery half of tracing (``GARRISON_TRACING=otel``): the context rides in the task headers.

On publish, ``before_task_publish`` writes the current context into the message's headers (``traceparent``);
on the worker, ``task_prerun`` starts a span for the task (``garrison.process``, ``garrison.effect``...) as a
child of that context and makes it current, and ``task_postrun`` ends it. So the task that applies an event
is in the trace of the ``garrison.ingest`` that published it, and an effect's task in the trace of the
task that committed it. Only garrison's tasks are traced. Imported only when tracing is on.
"""

from __future__ import annotations

from typing import Any

from celery.signals import before_task_publish, task_postrun, task_prerun
from opentelemetry import context, propagate, trace

from garrison.ops.tracing import TRACER, enable

__all__ = ["connect"]

_open: dict[str, tuple[Any, Any]] = {}  # task id -> (span, context token)


def connect() -> None:
    """Trace garrison's tasks in this process (idempotent: the signals are connected once)."""
    enable()
    before_task_publish.connect(_inject, weak=False, dispatch_uid="garrison.tracing.publish")
    task_prerun.connect(_start, weak=False, dispatch_uid="garrison.tracing.prerun")
    task_postrun.connect(_end, weak=False, dispatch_uid="garrison.tracing.postrun")


def _ours(name: Any) -> bool:
    return isinstance(name, str) and name.startswith("garrison.")


def _inject(sender: Any = None, headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is not None and _ours(sender or headers.get("task")):
        propagate.inject(headers)


class _RequestGetter:
    """Reads the propagated fields from a task's request (Celery makes message headers its attributes)."""

    def get(self, carrier: Any, key: str) -> list[str] | None:
        value = getattr(carrier, key, None)
        if value is None and isinstance(getattr(carrier, "headers", None), dict):
            value = carrier.headers.get(key)
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Any) -> list[str]:
        return []


def _start(task_id: str | None = None, task: Any = None, args: Any = None, **_: Any) -> None:
    if task is None or task_id is None or not _ours(task.name):
        return
    parent = propagate.extract(task.request, getter=_RequestGetter())  # type: ignore[arg-type]
    shown = getattr(task.request, "argsrepr", None) or ""
    span = trace.get_tracer(TRACER).start_span(task.name, context=parent, kind=trace.SpanKind.CONSUMER,
                                               attributes={"celery.task_id": task_id, "garrison.args": shown})
    token = context.attach(trace.set_span_in_context(span))
    _open[task_id] = (span, token)


def _end(task_id: str | None = None, task: Any = None, state: str | None = None, **_: Any) -> None:
    opened = _open.pop(task_id or "", None)
    if opened is None:
        return
    span, token = opened
    if state:
        span.set_attribute("celery.state", state)
    if state == "FAILURE":
        span.set_status(trace.Status(trace.StatusCode.ERROR))
    span.end()
    context.detach(token)
