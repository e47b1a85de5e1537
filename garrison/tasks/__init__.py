"""garrison's Celery tasks: ``celery -A garrison.tasks worker`` and ``celery -A garrison.tasks beat``.

The only package that imports Celery. The app is built from the environment when this module is
imported, because that is how ``celery -A`` finds an app; everything else takes settings explicitly.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from celery import Celery, Task
from celery.signals import beat_init, celeryd_init, worker_process_init, worker_ready

from garrison.client import Garrison, configure
from garrison.config import Settings
from garrison.core.relay import relay as relay_work
from garrison.core.runner import Runner
from garrison.errors import GarrisonError
from garrison.pulses.fanout import relay_stalled, run_pulse
from garrison.tasks import fleet
from garrison.tasks.app import create_celery
from garrison.tasks.failures import MessagesFailed, raise_if_failed
from garrison.tasks.publisher import CeleryPublisher

log = logging.getLogger("garrison.tasks")

settings = Settings.from_env()
app: Celery = create_celery(settings)
_client: Garrison | None = None


def client() -> Garrison:
    """The worker's client: built on first use in each process, publishing through this app."""
    global _client
    if _client is None:
        _client = Garrison(settings, publisher=CeleryPublisher(settings, app))
        configure(_client)
    return _client


def bind(celery_app: Celery, bound: Settings) -> None:
    """From now on the tasks' client publishes through ``celery_app`` (``install(app)``: a user's app)."""
    global _client
    _client = Garrison(bound, publisher=CeleryPublisher(bound, celery_app))
    configure(_client)


@worker_process_init.connect
def _after_fork(**_: Any) -> None:
    if _client is not None:
        _client.reset_after_fork()


@celeryd_init.connect
def _worker_starts(sender: Any = None, conf: Any = None, **_: Any) -> None:
    """Before the worker sets its queues up: import the automations (or refuse to start), consume their
    queues, register them with the fleet."""
    fleet.join(client(), conf if conf is not None else app.conf, str(sender or "worker"))


@worker_ready.connect
def _worker_ready(sender: Any = None, **_: Any) -> None:
    c = client()
    fleet.start_heartbeat(c, c.registry, str(getattr(sender, "hostname", None) or "worker"))


@beat_init.connect
def _beat_starts(**_: Any) -> None:
    try:
        fleet.automations(client())
    except GarrisonError as exc:
        fleet.refuse("beat", exc)


@app.task(name="garrison.process", acks_late=True, ignore_result=True, throws=(MessagesFailed,))
def process(tenant: str, keys: list[str]) -> dict[str, int]:
    """Apply the pending messages of these keys."""
    results = Runner(client()).run_keys(tenant, keys)
    counts = {"messages": sum(r.messages for r in results), "failed": sum(r.failed for r in results)}
    touched = sorted({*keys, *(k for r in results for k in r.keys)})  # its own keys and those it claimed
    raise_if_failed(client(), tenant, touched, counts)  # a failed message shows as a failed task in Flower
    return counts


@app.task(name="garrison.effect", bind=True, acks_late=True, ignore_result=True)
def effect(self: Task, tenant: str, effect_id: int) -> bool:
    """Perform one committed effect (a listener, a command); retried with exponential backoff. One
    entity's effects run one after another, in order (unless its automation says ``effects="parallel"``)."""
    limit = settings.effect_max_retries
    final = self.request.retries >= limit
    countdown = min(2 ** self.request.retries, 300)
    c = client()
    try:
        return Runner(c).perform_effect(
            tenant, effect_id, final_attempt=final, retry_at=c.clock.now() + timedelta(seconds=countdown)
        )
    except Exception as exc:
        if final:
            log.error("effect failed for good", extra={"tenant": tenant, "effect_id": effect_id})
            raise
        raise self.retry(exc=exc, countdown=countdown, max_retries=limit) from exc


@app.task(name="garrison.timers", acks_late=True, ignore_result=True)
def timers(tenant: str, due: str) -> int:
    """Fire the tenant's timers due by ``due`` (published as an ETA task). A duplicate finds nothing left
    to claim; a message that arrives early waits for its time."""
    c = client()
    when = datetime.fromisoformat(due)
    if when > c.clock.now():  # early (another host's clock): wait in the broker, not in a pool process
        c.publisher.publish_timers(tenant, [when])
        return 0
    return Runner(c).fire_timers(tenant)


@app.task(name="garrison.pulse", bind=True, acks_late=True, ignore_result=True)
def pulse(self: Task, tenant: str, slot_id: int) -> int:
    """Fan an opened pulse slot out to the automation's entities, a page (one transaction) at a time.
    Each page sends a ``task-progress`` event (``done``, ``total``) that Flower's event stream shows."""

    def progress(done: int, total: int | None) -> None:
        self.send_event("task-progress", tenant=tenant, slot=slot_id, done=done, total=total)

    return run_pulse(client(), tenant, slot_id, settings.pulse_chunk, progress)


@app.task(name="garrison.relay", ignore_result=True)
def relay() -> int:
    """Re-publish work committed but not dispatched (lost messages, killed workers)."""
    c = client()
    report = relay_work(c)
    # A pulse page beats while it runs; one silent for longer than a stalled effect died with its worker.
    stalled = relay_stalled(c, c.clock.now() - timedelta(seconds=settings.effect_stall_after))
    return report.total + len(stalled)


@app.task(name="garrison.prune", ignore_result=True)
def prune() -> int:
    """Delete what the retention windows let go (GARRISON_RETENTION_*), in small batches."""
    return client().prune().total


from garrison.tasks.install import install  # noqa: E402 - garrison.tasks.install(app): tasks in your Celery app

__all__ = ["app", "bind", "client", "effect", "install", "process", "prune", "pulse", "relay", "timers"]
