"""Reducer machines, after casern: named pure reducers and listeners on state change.

A reducer is ``(preferences, state, data) -> next_state``; on the first message for a key ``state`` is
``None``. Each reducer gets deep copies, so mutating its input is safe. A result equal to the current
state stores nothing and fires no listener; a reducer that raises stores nothing and records a failure.

Where garrison does better than casern: a listener receives exactly the ``(prev, current, data)`` of the
transition that fired it (not whatever the head is when it runs), it runs as a retried Celery task with
an idempotency key, and ``send`` with an unknown reducer or an empty key raises at the caller.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, overload

from garrison.core.contract import (
    ApplyContext,
    Automation,
    EffectClient,
    EffectContext,
    EffectSpec,
    Message,
    Outcome,
    Route,
    preferences_for,
)
from garrison.core.ingest import IngestedEvent
from garrison.core.jsondata import JSON, clone_json, ensure_json, json_equal
from garrison.core.namespace import reserved
from garrison.core.runtime import default_client
from garrison.errors import DefinitionError, ValidationError
from garrison.pulses.schedules import PulseSchedule

Reducer = Callable[[dict[str, Any], JSON, dict[str, Any]], JSON]


@dataclass(frozen=True, slots=True)
class Transition:
    """What a listener is handed: one stored transition, and what it may use to act on it."""

    machine: str
    tenant: str
    key: str
    version: int
    reducer: str
    prev: JSON
    current: JSON
    data: dict[str, Any]
    preferences: dict[str, Any]
    services: Mapping[str, Any]
    idempotency_key: str
    send: Callable[..., IngestedEvent]


Listener = Callable[[Transition], Any]


class Machine(Automation):
    """A reducer machine.

    ::

        support = Machine("support", preferences={"timeoutAfter": 10}, services={"email": send_email})

        @support.reducer
        def initialInquiry(prefs, state, data):
            return {"status": "inquired", "name": data["name"], "when": data["when"]}

        @support.listener
        def emailSupport(t: Transition):
            if t.current["status"] == "timeout":
                t.services["email"](t.preferences["supportPerson"], f"{t.current['name']} waits")

        support.send("initialInquiry", "12344", {"name": "ryan", "when": 0})
    """

    style = "machine"

    def __init__(
        self,
        name: str,
        *,
        preferences: Mapping[str, Any] | None = None,
        tenant_preferences: Mapping[str, Mapping[str, Any]] | None = None,
        services: Mapping[str, Any] | None = None,
        on: Mapping[str, str] | None = None,
        on_failure: str = "skip",
        effects: str = "entity",
    ) -> None:
        super().__init__(name, on_failure=on_failure, effects=effects)
        self.preferences: dict[str, Any] = dict(preferences or {})
        self.tenant_preferences: dict[str, dict[str, Any]] = {
            t: dict(p) for t, p in (tenant_preferences or {}).items()
        }
        self.services: dict[str, Any] = dict(services or {})
        self.reducers: dict[str, Reducer] = {}
        self.listeners: dict[str, Listener] = {}
        # Public event names (no target) that this machine maps onto one of its reducers.
        self.on: dict[str, str] = dict(on or {})

    # -- definition ---------------------------------------------------------------------------

    @overload
    def reducer(self, fn: Reducer) -> Reducer: ...
    @overload
    def reducer(self, fn: None = None, *, name: str | None = None) -> Callable[[Reducer], Reducer]: ...
    def reducer(self, fn: Reducer | None = None, *, name: str | None = None) -> Any:
        """Register a reducer under its function name (or ``name``)."""

        def register(f: Reducer) -> Reducer:
            self._add(self.reducers, name or f.__name__, f, "reducer")
            return f

        return register(fn) if fn is not None else register

    @overload
    def listener(self, fn: Listener) -> Listener: ...
    @overload
    def listener(self, fn: None = None, *, name: str | None = None) -> Callable[[Listener], Listener]: ...
    def listener(self, fn: Listener | None = None, *, name: str | None = None) -> Any:
        """Register a state-change listener; it runs after every stored transition, in order."""

        def register(f: Listener) -> Listener:
            self._add(self.listeners, name or f.__name__, f, "listener")
            return f

        return register(fn) if fn is not None else register

    def pulse(
        self,
        when: str,
        message: str | None = None,
        *,
        name: str | None = None,
        timezone: str = "UTC",
        data: Mapping[str, Any] | None = None,
        where: Mapping[str, Any] | None = None,
        missed: str = "latest",
        missed_limit: int = 100,
        overlap: str = "skip",
    ) -> Callable[[Reducer], Reducer]:
        """Pulse a reducer on a schedule: ``when`` is a cron expression (five fields, or six with seconds)
        evaluated in ``timezone``, or ``"every 30s"``. Each slot sends ``message`` to every entity of this
        machine (or those whose state matches ``where``) with the slot's time as ``data["now"]``.

        As a decorator on a reducer (``@inquiry.pulse("*/5 * * * *")``) it registers the reducer too and
        pulses it; called with a message (``inquiry.pulse("* * * * *", "checkTimeout")``) it just adds the
        pulse. A bad expression or timezone is refused here, at import.
        """
        def schedule(reducer: str) -> PulseSchedule:
            cron, every = (None, when) if when.strip().lower().startswith("every") else (when, None)
            return PulseSchedule(
                name=name or f"{self.name}.{reducer}", automation=self.name, message=reducer, cron=cron,
                every=every, timezone=timezone, data=dict(data or {}), where=where, missed=missed,
                missed_limit=missed_limit, overlap=overlap,
            )

        def add(spec: PulseSchedule) -> None:
            if any(p.name == spec.name for p in self.pulses):
                raise DefinitionError(f"pulse {spec.name!r} is defined twice", automation=self.name, part=spec.name)
            self.pulses = (*self.pulses, spec)

        if message is not None:
            add(schedule(message))

        def register(f: Reducer) -> Reducer:
            reducer = f.__name__
            if reducer not in self.reducers:
                self._add(self.reducers, reducer, f, "reducer")
            if message is None:
                add(schedule(reducer))
            return f

        return register

    def _add(self, table: dict[str, Any], name: str, fn: Any, what: str) -> None:
        if not callable(fn):
            raise DefinitionError(f"a {what} must be callable", automation=self.name, part=name)
        if name in table:
            raise DefinitionError(f"{what} {name!r} is defined twice", automation=self.name, part=name)
        table[name] = fn

    def preferences_for(self, tenant: str) -> dict[str, Any]:
        return preferences_for(self.preferences, self.tenant_preferences, tenant)

    # -- sending ------------------------------------------------------------------------------

    def send(
        self,
        reducer: str,
        key: str,
        data: Mapping[str, Any] | None = None,
        *,
        tenant: str | None = None,
        idempotency_key: str | None = None,
        client: EffectClient | None = None,
    ) -> IngestedEvent:
        """Ingest a message for ``reducer`` of this machine at ``key``. Fire-and-forget, like casern."""
        self.check_reducer(reducer)
        return (client or default_client()).ingest(
            reducer, key, {} if data is None else data, tenant=tenant, idempotency_key=idempotency_key, target=self.name
        )

    def check_reducer(self, reducer: str) -> None:
        if reducer not in self.reducers:
            raise ValidationError(
                f"machine {self.name!r} has no reducer {reducer!r}; it has {sorted(self.reducers)}",
                field="reducer",
                automation=self.name,
            )

    # -- the engine's side --------------------------------------------------------------------

    def accepts(self, message: Message) -> bool:
        if message.target is not None:
            return message.target == self.name
        return message.name in self.on

    def route(self) -> Route:
        return Route(tuple(self.on))

    def reducer_for(self, message: Message) -> str:
        if message.target is not None and message.name in self.reducers:
            return message.name
        return self.on.get(message.name, message.name)

    def apply(self, state: JSON, message: Message, ctx: ApplyContext) -> Outcome:
        label = self.reducer_for(message)
        fn = self.reducers.get(label)
        if fn is None:
            raise LookupError(f"machine {self.name!r} has no reducer {label!r}")
        result = fn(self.preferences_for(ctx.tenant), clone_json(state), clone_json(message.data))
        result = ensure_json(result, f"the state returned by reducer {label!r}")
        if json_equal(result, state):
            return Outcome(state=state, changed=False, label=label)
        effects = [
            EffectSpec(
                "listener",
                {"listener": name, "reducer": label, "prev": state, "current": result, "data": message.data},
            )
            for name in self.listeners
        ]
        return Outcome(state=result, changed=True, label=label, effects=effects)

    def perform(self, effect: EffectSpec, ctx: EffectContext) -> None:
        if effect.kind != "listener":
            super().perform(effect, ctx)
        payload = effect.payload
        listener = self.listeners.get(payload["listener"])
        if listener is None:
            raise LookupError(f"machine {self.name!r} has no listener {payload['listener']!r}")
        counter = itertools.count(1)

        def send(reducer: str, key: str, data: Mapping[str, Any] | None = None) -> IngestedEvent:
            # Stable per call site order, so a retried listener never sends twice.
            return self.send(
                reducer,
                key,
                data,
                tenant=ctx.tenant,
                idempotency_key=reserved("send", ctx.idempotency_key, next(counter)),
                client=ctx.client,
            )

        listener(
            Transition(
                machine=self.name,
                tenant=ctx.tenant,
                key=ctx.key,
                version=payload["version"],
                reducer=payload["reducer"],
                prev=clone_json(payload["prev"]),
                current=clone_json(payload["current"]),
                data=clone_json(payload["data"]),
                preferences=self.preferences_for(ctx.tenant),
                services=self.services,
                idempotency_key=ctx.idempotency_key,
                send=send,
            )
        )
