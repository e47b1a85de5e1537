"""OpenTelemetry (``GARRISON_TRACING=otel``): one trace from ingest through the Celery task, the apply and
each effect, its context carried in the task headers and stored with the event; tested with the SDK's
in-memory exporter and a worker running in this process, on both backends. Without the setting nothing
imports OpenTelemetry."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import select

import garrison.tasks
from garrison.client import Garrison, configure
from garrison.config import Settings
from garrison.core import instrument
from garrison.models import EVENTS
from garrison.ops.inspect import inspect_key
from tests.apps.console import shop
from tests.harness import ROOT, wait_until

_exporter: Any = None


def exporter() -> Any:
    """The process's in-memory exporter (OpenTelemetry takes one tracer provider per process)."""
    global _exporter
    if _exporter is None:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        _exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_exporter))
        trace.set_tracer_provider(provider)
    return _exporter


@pytest.fixture
def traced(backend: str, settings_for: Callable[..., Settings]) -> Iterator[tuple[Settings, Any]]:
    """Tracing on, and this process's garrison state put back afterwards."""
    pytest.importorskip("opentelemetry.sdk")
    spans = exporter()
    spans.clear()
    before = instrument.current()
    default = configure(None)
    configure(default)
    settings = settings_for(backend, tracing="otel", automations=("tests.apps.console",))
    yield settings, spans
    instrument.use(before)
    configure(default)
    garrison.tasks._client = None


def test_one_trace_goes_from_ingest_through_the_task_and_the_apply_to_each_effect(traced: tuple[Settings, Any]) -> None:
    from celery.contrib.testing.worker import start_worker

    from garrison.tasks.app import create_celery
    from garrison.tasks.publisher import CeleryPublisher

    settings, spans = traced
    app = create_celery(settings)
    garrison.tasks.install(app, settings=settings, beat=False)
    client = Garrison(settings, publisher=CeleryPublisher(settings, app))
    try:
        with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=30):
            shop.send("placed", "o-1", {"total": 3}, tenant="acme", client=client)

            def effects_done() -> bool:
                effects = inspect_key(client, "o-1", tenant="acme").effects
                return bool(effects) and all(e.status == "done" for e in effects)

            wait_until(effects_done, timeout=60, what="the worker to apply the event and perform the listener")
            wait_until(lambda: any(s.name == "garrison.effect" for s in spans.get_finished_spans()), timeout=30,
                       what="the effect task's span to end")
    finally:
        client.db.dispose()

    finished = spans.get_finished_spans()
    by_name: dict[str, Any] = {}
    for span in finished:
        by_name.setdefault(span.name, span)
    ingest, process, apply = by_name["garrison.ingest"], by_name["garrison.process"], by_name["garrison.apply"]
    effect_task, perform = by_name["garrison.effect"], by_name["garrison.effect.perform"]
    # One trace, and each span the child of the one that caused it.
    assert {s.context.trace_id for s in (ingest, process, apply, effect_task, perform)} == {ingest.context.trace_id}
    assert process.parent.span_id == ingest.context.span_id        # through the task headers
    assert apply.parent.span_id == ingest.context.span_id          # through the context stored with the event
    assert [link.context.span_id for link in apply.links] == [process.context.span_id]
    assert effect_task.parent.span_id == process.context.span_id
    assert perform.parent.span_id == effect_task.context.span_id
    assert (apply.attributes["garrison.automation"], apply.attributes["garrison.key"]) == ("shop", "o-1")
    assert perform.attributes["garrison.effect_kind"] == "listener"
    with client.db.session() as s:
        [stored] = s.execute(select(EVENTS.c.trace).where(EVENTS.c.key == "o-1")).scalars()
    assert stored.startswith(f"00-{ingest.context.trace_id:032x}-{ingest.context.span_id:016x}-")


def test_without_the_setting_garrison_neither_imports_its_tracing_nor_installs_a_tracer(
    settings_for: Callable[..., Settings]
) -> None:
    # redis-py 8 imports opentelemetry itself when the package is installed (its own observability), so
    # the test watches garrison's side: its tracing module and the instrument in use.
    settings = settings_for("sqlite", automations=("tests.apps.console",))
    script = """
import json, sys
from garrison.client import Garrison
from garrison.config import Settings
from garrison.core.runner import Runner
import garrison.tasks
from tests.apps.console import shop
settings = Settings.from_env()
client = Garrison(settings)
shop.send("placed", "o-1", {"total": 1}, client=client)
client.run_pending()
from garrison.core import instrument
print(json.dumps([m for m in sys.modules if m == "garrison.ops.tracing"] + [type(instrument.current()).__name__]))
"""
    env = {**settings.as_env(), "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["Instrument"]
