"""Statecharts, after persistable-xstate-actor: declared states, run per key by the engine.

::

    def paid_enough(context, event):
        return event.data["amount"] >= context["total"]

    orders = Statechart(
        "orders", version=1, initial="open", context={"total": 0},
        states={
            "open": {"on": {"order.placed": {"target": "awaiting_payment", "actions": set_total}}},
            "awaiting_payment": {
                "on": {"order.paid": {"target": "shipping", "guard": paid_enough}},
                "after": {"30m": "cancelled"},          # a durable timer, cancelled when the state is left
            },
            "shipping": {"emit": "order.ready_to_ship", "on": {"order.shipped": "done"}},
            "done": {"type": "final"},
            "cancelled": {"type": "final", "emit": "order.cancelled"},
        },
    )

An XState machine configuration (JSON) becomes a statechart with :meth:`Statechart.from_xstate`.

A state is atomic, compound (``initial`` + ``states``), ``"type": "parallel"`` (every child region active
at once) or ``"type": "final"``. The chart itself is compound (``initial=``), or parallel
(``type="parallel"``, no ``initial``: every top-level state is a region, and the chart is done when every
region is in a final state). A state takes ``on`` (event name -> transition), ``after`` (delay ->
transition: a durable timer), ``on_done`` (when its final child, or every region's, is reached),
``entry`` / ``exit`` actions and ``emit`` (an event ingested each time the state is entered). A transition
is a target, a dict ``{"target", "guard", "actions"}`` or a list of them (the first whose guard passes
wins); no target means the actions run and the state stays. Guards are ``(context, event) -> bool`` and
actions ``(context, event) -> dict | None`` (mutate the context, or return a new one); give them as
callables or by name from ``guards=`` / ``actions=``. A target is a sibling, a state of an ancestor
(``"b.c"``), a child (``".c"``) or an ``id`` (``"#paid"``). The semantics are SCXML's (and xstate's):
innermost transitions first, exit actions deepest first, then transition actions, then entry actions
outermost first; a transition to the state itself re-enters it (restarting its ``after`` timers).

The snapshot, stored as the entity's JSON state, holds the machine name and version, ``value`` (xstate's
nested form), ``context``, ``status`` (``active`` / ``done``), the active states with the entry number
each was entered with (``entered``) and the entry counter (``entries``). An entry's emit carries the
idempotency key ``statechart:<name>:<key>:entry:<n>``: replaying, retrying or reloading the snapshot can
never emit it twice. Reaching a top-level final state marks the snapshot done; later events are ignored.

Versions: events sent by :meth:`Statechart.send` or an actor carry ``{"$machine": {"name", "version"}}``
in their data; one for another version is refused with :class:`~garrison.errors.VersionMismatch` (the
message is marked failed, retryable once the right code runs). A snapshot stored by another version is
upgraded by ``migrations={old_version: fn(snapshot) -> snapshot}``, else refused the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from garrison.automations.statecharts.definition import Action, ChartDefinition, Guard, Migration, StateNode
from garrison.automations.statecharts.macrostep import MAX_MICROSTEPS, SOURCE, Macrostep, bounded
from garrison.automations.statecharts.xstate import from_xstate
from garrison.core.contract import ApplyContext, Automation, EmitSpec, Message, Outcome, Route, TimerSpec
from garrison.core.ingest import IngestedEvent
from garrison.core.jsondata import JSON, clone_json, ensure_json, json_equal
from garrison.core.runtime import Runtime, default_client
from garrison.errors import DefinitionError, ValidationError, VersionMismatch

__all__ = [
    "MAX_MICROSTEPS", "SOURCE", "STAMP", "Action", "Guard", "Migration", "Statechart", "Step", "bounded",
]

STAMP = "$machine"


@dataclass(slots=True)
class Step:
    """What one event did to a snapshot: ``handled`` False means no transition was enabled (none for the
    event in the active states, or every guard refused: ``refused`` names those guards)."""

    snapshot: dict[str, Any]
    handled: bool
    taken: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    timers: list[TimerSpec] = field(default_factory=list)
    cancel_timers: list[str] = field(default_factory=list)
    emits: list[EmitSpec] = field(default_factory=list)


class Statechart(Automation):
    """A statechart automation. See the module's doc for the definition format and semantics."""

    style = "statechart"

    def __init__(
        self,
        name: str,
        *,
        initial: str | None = None,
        states: Mapping[str, Mapping[str, Any]],
        version: int = 1,
        context: Mapping[str, Any] | Callable[[Message], Mapping[str, Any]] | None = None,
        on: Mapping[str, Any] | None = None,
        guards: Mapping[str, Guard] | None = None,
        actions: Mapping[str, Action] | None = None,
        migrations: Mapping[int, Migration] | None = None,
        on_failure: str = "skip",
        effects: str = "entity",
        id: str | None = None,
        type: str = "compound",
    ) -> None:
        super().__init__(name, on_failure=on_failure, effects=effects)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise DefinitionError(f"version must be a positive int, not {version!r}", automation=name, part="version")
        self.version = version
        if callable(context):
            self._context: Any = context
        else:
            try:
                self._context = ensure_json(dict(context or {}), f"the context of statechart {name!r}")
            except (TypeError, ValueError) as exc:
                raise DefinitionError(str(exc), automation=name, part="context") from exc
        self.guards = self._named(guards, "guard")
        self.actions = self._named(actions, "action")
        self.migrations: dict[int, Migration] = {}
        for old, fn in (migrations or {}).items():
            if not isinstance(old, int) or not 1 <= old < version or not callable(fn):
                raise DefinitionError(
                    f"migrations maps an older version (1..{version - 1}) to a callable, not {old!r}: {fn!r}",
                    automation=name, part="migrations",
                )
            self.migrations[old] = fn
        definition = ChartDefinition(
            name, initial=initial, states=states, on=on, guards=self.guards, actions=self.actions, root_id=id,
            root_type=type,
        )
        self.states: dict[str, StateNode] = definition.states
        self.root = definition.root
        self.events = definition.events

    @classmethod
    def from_xstate(
        cls,
        config: Mapping[str, Any],
        *,
        name: str | None = None,
        version: int = 1,
        guards: Mapping[str, Guard] | None = None,
        actions: Mapping[str, Action] | None = None,
        delays: Mapping[str, Any] | None = None,
        migrations: Mapping[int, Migration] | None = None,
    ) -> Statechart:
        """A statechart from an XState machine configuration (the JSON of ``createMachine({...})``), with
        its guards and actions given by name as Python functions ``(context, event)`` (plus ``params``
        when the configuration passes some) and named delays in ``delays=`` (milliseconds, or a
        duration). The name is the machine's ``id`` unless ``name`` is given. What garrison cannot run
        (``invoke``, ``always``, history states...) raises :class:`DefinitionError` naming the state and
        the key; :mod:`garrison.automations.statecharts.xstate` lists it."""
        spec = from_xstate(config, name=name, guards=guards or {}, actions=actions or {}, delays=delays or {})
        return cls(spec.pop("name"), version=version, migrations=migrations, **spec)

    # -- definition -----------------------------------------------------------------------------

    def _named(self, table: Mapping[str, Callable[..., Any]] | None, what: str) -> dict[str, Callable[..., Any]]:
        for label, fn in (table or {}).items():
            if not callable(fn):
                raise DefinitionError(f"{what} {label!r} is not callable", automation=self.name, part=label)
        return dict(table or {})

    # -- sending --------------------------------------------------------------------------------

    def stamp(self, data: Mapping[str, Any] | None) -> dict[str, Any]:
        """``data`` with this machine's name and version, so another version refuses it."""
        if data is not None and not isinstance(data, Mapping):
            raise ValidationError(f"data must be a JSON object (a dict), not {type(data).__name__}", field="data")
        return {**dict(data or {}), STAMP: {"name": self.name, "version": self.version}}

    def check_event(self, event: str) -> None:
        if event not in self.events:
            raise ValidationError(
                f"statechart {self.name!r} has no transition on {event!r}; its events are {sorted(self.events)}",
                field="event", automation=self.name,
            )

    def send(
        self,
        event: str,
        key: str,
        data: Mapping[str, Any] | None = None,
        *,
        tenant: str | None = None,
        idempotency_key: str | None = None,
        client: Runtime | None = None,
    ) -> IngestedEvent:
        """Ingest ``event`` for this statechart at ``key``, stamped with this version (fire-and-forget)."""
        self.check_event(event)
        return (client or default_client()).ingest(
            event, key, self.stamp(data), tenant=tenant, idempotency_key=idempotency_key, target=self.name
        )

    # -- the engine's side ----------------------------------------------------------------------

    def accepts(self, message: Message) -> bool:
        if message.target is not None:
            return message.target == self.name
        return message.name in self.events

    def route(self) -> Route:
        return Route(tuple(sorted(self.events)))

    def apply(self, state: JSON, message: Message, ctx: ApplyContext) -> Outcome:
        event = self.unstamp(message)
        if event is None:
            return Outcome(state=state, changed=False, label=message.name)
        step = self.step(state, event, key=ctx.key, now=ctx.now)
        if state is not None and json_equal(step.snapshot, state):
            return Outcome(state=state, changed=False, label=message.name)
        return Outcome(
            state=step.snapshot, changed=True, label=message.name, timers=step.timers,
            cancel_timers=step.cancel_timers, emits=step.emits,
        )

    def unstamp(self, message: Message) -> Message | None:
        """The message without its version stamp; None when it is stamped for another machine and not sent
        to this one. Raises :class:`VersionMismatch` for this machine at another version."""
        stamp = message.data.get(STAMP) if isinstance(message.data, Mapping) else None
        if stamp is None:
            return message
        name = stamp.get("name") if isinstance(stamp, Mapping) else None
        version = stamp.get("version") if isinstance(stamp, Mapping) else None
        if name != self.name and message.target != self.name:
            return None
        if name != self.name or version != self.version:
            raise VersionMismatch(
                f"event {message.name!r} was sent for statechart {name!r} version {version!r}, but this is "
                f"{self.name!r} version {self.version}: it is refused rather than applied to another definition",
                automation=self.name, key=message.key, event=message.name, expected=self.version, got=version,
            )
        return replace(message, data={k: v for k, v in message.data.items() if k != STAMP})

    def step(self, snapshot: JSON, event: Message, *, key: str, now: datetime) -> Step:
        """Pure: apply one (unstamped) event to a snapshot (None: start the machine first)."""
        run = Macrostep(self, key, now)
        run.load(snapshot, event)
        handled = run.dispatch(event)
        return Step(
            snapshot=run.snapshot(), handled=handled, taken=run.taken, refused=run.refused, timers=run.timers,
            cancel_timers=run.cancels, emits=run.emits,
        )

    def restore(self, snapshot: JSON, key: str) -> dict[str, Any] | None:
        """A stored snapshot checked against this definition (migrated when stored by an older version);
        raises :class:`VersionMismatch` when it cannot be used. None stays None (not started yet)."""
        if snapshot is None:
            return None
        run = Macrostep(self, key, datetime.min)
        run.load(snapshot, None)
        return run.snapshot()

    def initial_context(self, event: Message) -> dict[str, Any]:
        value = self._context(event) if callable(self._context) else clone_json(self._context)
        if not isinstance(value, Mapping):
            raise TypeError(f"the context of statechart {self.name!r} must be a dict, not {type(value).__name__}")
        return dict(ensure_json(dict(value), f"the context of statechart {self.name!r}"))

    def migrate(self, snapshot: dict[str, Any], key: str) -> dict[str, Any]:
        """A snapshot stored by another version, made fit for this one by ``migrations[its version]``."""
        version = snapshot.get("version")
        if version == self.version:
            return snapshot
        fn = self.migrations.get(version) if isinstance(version, int) else None
        if fn is None:
            raise VersionMismatch(
                f"the snapshot of {self.name!r} for key {key!r} was stored by version {version!r}; this is "
                f"version {self.version} and has no migration from it (Statechart(..., migrations=...))",
                automation=self.name, key=key, expected=self.version, got=version,
            )
        migrated = fn(clone_json(snapshot))
        if not isinstance(migrated, Mapping):
            raise TypeError(f"migration {version} -> {self.version} of {self.name!r} must return a dict")
        return {**dict(migrated), "version": self.version}

    def value_of(self, active: Iterable[str]) -> Any:
        """xstate's nested state value of a set of active state paths."""
        paths = set(active)

        def value(node: StateNode) -> Any:
            kids = [c for c in node.children if c.path in paths]
            if node.kind == "parallel":
                return {c.name: value(c) for c in kids}
            if not kids:
                return {}
            child = kids[0]
            return {child.name: value(child)} if any(c.path in paths for c in child.children) else child.name

        return value(self.root)
