"""The public client: :class:`Garrison`, the core's runtime plus the operations of the layers above it.

The core (:mod:`garrison.core.runtime`) holds what the engine, the styles and the pulses need of a client:
settings, database, registry, publisher, clock, ingest, state, replay, retry and journey runs. This module
adds what lives above the core: pulse administration and running pending work inline. It is the
composition root of the library; the interfaces (CLI, HTTP, Django, Flask, Celery tasks) build on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from garrison.core import runtime
from garrison.core.feed import Change, Follow
from garrison.core.ingest import IngestedEvent
from garrison.core.retention import PruneReport, prune
from garrison.core.runner import Runner
from garrison.core.runtime import Runtime
from garrison.pulses.admin import PulseInfo, get_pulse, list_pulses, remove_pulse, save_pulse, set_paused
from garrison.pulses.schedules import PulseSchedule

__all__ = ["Change", "Follow", "Garrison", "IngestedEvent", "configure", "default_client"]


class Garrison(Runtime):
    """garrison for one set of settings.

    ``automations`` adds automations to those found in ``settings.automations`` modules; ``publisher``
    replaces the Celery publisher (tests use it to drop messages); ``clock`` replaces system time.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.settings.tracing == "otel":  # OpenTelemetry is imported only then (the otel extra)
            from garrison.ops.tracing import enable

            enable()

    def run_pending(self, tenant: str | None = None, *, effects: bool = True) -> int:
        """Apply every pending message of a tenant in this process, with no worker, and perform the
        effects inline. For scripts, tests and notebooks; production leaves this to the workers."""
        return Runner(self).run_pending(tenant, effects=effects)

    def follow(
        self,
        automation: str | None = None,
        *,
        since: str | None = None,
        tenant: str | None = None,
        wait: bool = True,
        idle_timeout: float | None = None,
    ) -> Follow:
        """The live change feed (casern's ``follow``): every stored state version of the tenant (of one
        ``automation``, or all), in order, as :class:`Change` objects (key, version, prev, current, the
        message and its data, and a ``cursor``).

        ``since``: None starts from the oldest version kept, ``"now"`` with what is committed from now on,
        and a change's ``cursor`` right after that change: a reader that stores the cursor of what it handled
        resumes after a restart without missing or repeating a version. It waits for new changes (woken by
        PostgreSQL's NOTIFY, polling on SQLite); ``wait=False`` stops once caught up, ``idle_timeout`` after
        that many seconds with nothing new. A cursor behind what retention deleted raises CursorExpired."""
        return Follow(
            self.db, self.tenant_of(tenant), automation=automation, since=since, wait=wait,
            idle_timeout=idle_timeout, poll=self.settings.follow_poll,
        )

    def prune(self, *, tenant: str | None = None, dry_run: bool = False) -> PruneReport:
        """Delete what the retention windows (``GARRISON_RETENTION_*``) let go, for one tenant or every one,
        in small batches; with ``dry_run``, count it instead. Beat does this every ``retention_interval``
        seconds (:mod:`garrison.core.retention` says what each rule keeps)."""
        tenants = None if tenant is None else [self.tenant_of(tenant)]
        return prune(self.db, self.settings, self.clock.now(), tenants=tenants, dry_run=dry_run)


    # -- pulses -----------------------------------------------------------------------------------

    def add_pulse(
        self,
        name: str,
        automation: str,
        message: str,
        *,
        cron: str | None = None,
        every: str | float | timedelta | None = None,
        timezone: str = "UTC",
        data: Mapping[str, Any] | None = None,
        where: Mapping[str, Any] | None = None,
        missed: str = "latest",
        missed_limit: int = 100,
        overlap: str = "skip",
        tenant: str | None = None,
    ) -> PulseInfo:
        """Add a pulse schedule at run time (beat fires it from its next tick, without a restart): send
        ``message`` with the slot's time as ``now`` to every entity of ``automation`` (those whose state
        matches ``where``), on ``cron`` in ``timezone`` or ``every`` interval.

        A bad cron expression, timezone, interval or policy is refused with a DefinitionError whose
        ``part`` names it; an automation the registry does not know with UnknownAutomation; a message the
        machine has no reducer for with ValidationError. Nothing is stored then. A pulse of the same name
        (in the tenant) is replaced: it keeps its paused flag, and its next slot unless the timing changed.
        """
        target = self.registry.get(automation)  # UnknownAutomation for a name no worker would run
        spec = PulseSchedule(
            name=name, automation=automation, message=message, cron=cron, every=every, timezone=timezone,
            data=dict(data or {}), where=where, missed=missed, missed_limit=missed_limit, overlap=overlap,
        )
        check = getattr(target, "check_reducer", None)
        if callable(check):
            check(message)
        tenant = self.tenant_of(tenant)
        save_pulse(self.db, tenant, spec, self.clock.now())
        return get_pulse(self.db, tenant, name)

    def pulses(self, *, tenant: str | None = None) -> list[PulseInfo]:
        """Every pulse schedule of the tenant, by name, each with its last 10 slots (status, done / total)."""
        return list_pulses(self.db, self.tenant_of(tenant))

    def pulse(self, name: str, *, tenant: str | None = None) -> PulseInfo:
        """One pulse schedule of the tenant with its last 10 slots; NotFound for an unknown name."""
        return get_pulse(self.db, self.tenant_of(tenant), name)

    def pause_pulse(self, name: str, *, tenant: str | None = None) -> PulseInfo:
        """Stop firing a pulse. A slot already running finishes. NotFound for an unknown name."""
        return set_paused(self.db, self.tenant_of(tenant), name, True, self.clock.now())

    def resume_pulse(self, name: str, *, tenant: str | None = None) -> PulseInfo:
        """Fire a paused pulse again, from its first slot after now: the slots that fell in the pause are
        not fired late, whatever its missed-slot policy. NotFound for an unknown name."""
        return set_paused(self.db, self.tenant_of(tenant), name, False, self.clock.now())

    def remove_pulse(self, name: str, *, tenant: str | None = None) -> None:
        """Delete a pulse schedule; its slots stay in SQL as history. A pulse defined in code
        (``@machine.pulse``) comes back at beat's next sync: remove it from the code, or pause it.
        NotFound for an unknown name."""
        remove_pulse(self.db, self.tenant_of(tenant), name)


runtime.set_default_factory(Garrison)


def default_client() -> Garrison:
    """The process-wide client, built from the environment the first time it is needed."""
    client = runtime.default_client()
    if not isinstance(client, Garrison):  # a bare Runtime configured by hand: give it the full API
        raise TypeError(f"the configured client is a {type(client).__name__}, not a Garrison")
    return client


def configure(client: Runtime | None) -> Runtime | None:
    """Set (or with None, forget) the process-wide client. Returns the previous one."""
    return runtime.configure(client)
