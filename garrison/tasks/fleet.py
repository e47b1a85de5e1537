"""A worker joins the fleet: it imports its automations when it starts (refusing to start without any,
or when one cannot be imported), consumes its automations' queues as well as the fleet's, registers its
automations with their routes in SQL, and keeps them registered while it runs. Beat checks the same
before it starts. See :mod:`garrison.core.fleet` for what the registration is for."""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

from garrison.client import Garrison
from garrison.core import fleet
from garrison.core.registry import Registry
from garrison.errors import ConfigurationError, GarrisonError
from garrison.tasks.app import queues_for

log = logging.getLogger("garrison.worker")

# How often a running worker refreshes its registration (the fleet forgets an automation no worker has
# refreshed for GARRISON_AUTOMATION_TTL).
HEARTBEAT = 30.0

__all__ = ["automations", "join", "refuse", "start_heartbeat"]


def automations(client: Garrison) -> Registry:
    """The process's automations, imported now. ConfigurationError when a module cannot be imported, or
    when there are none and the settings do not say this process only ingests."""
    registry = client.registry
    if not len(registry) and not client.settings.ingest_only:
        raise ConfigurationError(
            "no automations to run: set GARRISON_AUTOMATIONS to the modules that define them (comma separated, "
            "importable from the working directory); a process that only ingests sets GARRISON_INGEST_ONLY=true",
            field="automations",
        )
    return registry


def refuse(what: str, exc: GarrisonError) -> None:
    """Stop the process before it consumes anything, with one readable line (a signal handler's exception
    would only be logged by Celery, and the process would go on)."""
    print(f"garrison: the {what} cannot start: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def join(client: Garrison, conf: Any, holder: str) -> Registry:
    """What a worker does before Celery sets its queues up: import, choose its queues, register."""
    try:
        registry = automations(client)
    except GarrisonError as exc:
        refuse("worker", exc)
        raise  # unreachable: refuse exits
    ours = queues_for(client.settings, [a.name for a in registry])
    # Beside the queues the app already consumes (a user's app that installed garrison's tasks keeps its own).
    kept = [q for q in (conf.task_queues or []) if q.name not in {o.name for o in ours}]
    conf.task_queues = [*kept, *ours]
    listed = ", ".join(f"{a.name} ({a.style})" for a in registry) or "none (GARRISON_INGEST_ONLY)"
    print(f"garrison: automations {listed}; queue {client.settings.queue!r} and one per automation",
          file=sys.stderr, flush=True)
    _register(client, registry, holder)
    return registry


def start_heartbeat(client: Garrison, registry: Registry, holder: str) -> threading.Event:
    """Refresh the registration every :data:`HEARTBEAT` seconds in a daemon thread of the worker's main
    process (started once the pool has forked). Set the returned event to stop it."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(HEARTBEAT):
            _register(client, registry, holder)

    threading.Thread(target=run, name="garrison-fleet-heartbeat", daemon=True).start()
    return stop


def _register(client: Garrison, registry: Registry, holder: str) -> None:
    try:
        fleet.register(client.db, list(registry), holder, client.clock.now())
    except Exception:  # the database is down: the next beat registers, and nothing is consumed meanwhile
        log.warning("could not register this worker's automations; will retry", exc_info=True)
