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

A state is atomic, compound (``initial`` + ``states``), ``"type": "parallel"`` (every child region active
at once) or ``"type": "final"``. A state takes ``on`` (event name -> transition), ``after`` (delay ->
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

import hashlib
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from garrison.automations.base import (
    JSON,
    ApplyContext,
    Automation,
    EmitSpec,
    Message,
    Outcome,
    TimerSpec,
    clone_json,
    ensure_json,
    json_equal,
)
from garrison.automations.timers import TIMER_EVENT
from garrison.durations import format_duration, parse_duration
from garrison.errors import DefinitionError, GarrisonError, ValidationError, VersionMismatch

if TYPE_CHECKING:
    from garrison.client import Garrison, IngestedEvent

STAMP = "$machine"
SOURCE = "$source"
MAX_MICROSTEPS = 100
Guard = Callable[[dict[str, Any], Message], Any]
Action = Callable[[dict[str, Any], Message], Any]
Migration = Callable[[dict[str, Any]], dict[str, Any]]

_STATE_KEYS = frozenset({"type", "initial", "states", "on", "after", "on_done", "entry", "exit", "emit", "id"})
_TRANSITION_KEYS = frozenset({"target", "guard", "actions"})
_EMIT_KEYS = frozenset({"name", "data", "key", "target"})
_TYPES = ("atomic", "compound", "parallel", "final")


def bounded(text: str, limit: int = 255) -> str:
    """``text`` when it fits a 255-character column, else a stable digest of it (same text, same key)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit - 42]}~{hashlib.sha1(text.encode()).hexdigest()}"


@dataclass(eq=False, slots=True)
class _Transition:
    source: _Node
    targets: tuple[_Node, ...]
    guard: tuple[str, Guard] | None
    actions: tuple[tuple[str, Action], ...]
    label: str


@dataclass(frozen=True, slots=True)
class _Emit:
    name: str
    data: Mapping[str, Any] | Callable[[dict[str, Any], Message], Any]
    key: str | Callable[[dict[str, Any], Message], Any] | None
    target: str | None


@dataclass(eq=False, slots=True)
class _Node:
    path: str
    name: str
    kind: str
    parent: _Node | None
    order: int
    raw: Mapping[str, Any]
    children: list[_Node] = field(default_factory=list)
    initial: _Node | None = None
    on: dict[str, list[_Transition]] = field(default_factory=dict)
    after: list[tuple[timedelta, list[_Transition]]] = field(default_factory=list)
    on_done: list[_Transition] = field(default_factory=list)
    entry: tuple[tuple[str, Action], ...] = ()
    exit: tuple[tuple[str, Action], ...] = ()
    emit: _Emit | None = None

    def ancestors(self) -> list[_Node]:
        """Proper ancestors, nearest first, up to the root."""
        out, node = [], self.parent
        while node is not None:
            out.append(node)
            node = node.parent
        return out

    def within(self, other: _Node) -> bool:
        """True when this node is a proper descendant of ``other``."""
        return any(a is other for a in self.ancestors())

    def child(self, name: str) -> _Node | None:
        return next((c for c in self.children if c.name == name), None)

    def __repr__(self) -> str:
        return f"<state {self.path or '(root)'}>"


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
        initial: str,
        states: Mapping[str, Mapping[str, Any]],
        version: int = 1,
        context: Mapping[str, Any] | Callable[[Message], Mapping[str, Any]] | None = None,
        on: Mapping[str, Any] | None = None,
        guards: Mapping[str, Guard] | None = None,
        actions: Mapping[str, Action] | None = None,
        migrations: Mapping[int, Migration] | None = None,
    ) -> None:
        super().__init__(name)
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
        self.states: dict[str, _Node] = {}
        self._ids: dict[str, _Node] = {}
        root_raw = {"initial": initial, "states": states, "on": on or {}}
        self.root = self._build(root_raw, "", "", None)
        for node in self.states.values():
            self._link(node)
        self.events = frozenset(e for node in self.states.values() for e in node.on)
        for event in self.events:
            if not isinstance(event, str) or not event.strip() or event == TIMER_EVENT:
                raise DefinitionError(f"{event!r} cannot be an event name", automation=name, part="on")

    # -- definition -----------------------------------------------------------------------------

    def _named(self, table: Mapping[str, Callable[..., Any]] | None, what: str) -> dict[str, Callable[..., Any]]:
        for label, fn in (table or {}).items():
            if not callable(fn):
                raise DefinitionError(f"{what} {label!r} is not callable", automation=self.name, part=label)
        return dict(table or {})

    def _error(self, node_path: str, message: str, part: str | None = None) -> DefinitionError:
        where = f"state {node_path!r}" if node_path else "the root state"
        return DefinitionError(f"{where}: {message}", automation=self.name, state=node_path or "(root)", part=part)

    def _build(self, raw: Any, name: str, path: str, parent: _Node | None) -> _Node:
        if not isinstance(raw, Mapping):
            raise self._error(path, f"a state is a dict, not {type(raw).__name__}")
        unknown = set(raw) - _STATE_KEYS
        if unknown:
            hint = " (did you mean on_done?)" if "onDone" in unknown else ""
            raise self._error(path, f"unknown keys {sorted(unknown)}{hint}; a state takes {sorted(_STATE_KEYS)}")
        children_raw = raw.get("states") or {}
        if not isinstance(children_raw, Mapping):
            raise self._error(path, "states must be a dict of name -> state", "states")
        kind = raw.get("type") or ("compound" if children_raw else "atomic")
        if kind not in _TYPES:
            raise self._error(path, f"type must be one of {', '.join(_TYPES)}, not {kind!r}", "type")
        if kind in ("compound", "parallel") and not children_raw:
            raise self._error(path, f"a {kind} state needs child states", "states")
        if kind in ("atomic", "final") and children_raw:
            raise self._error(path, f"a {kind} state cannot have child states", "states")
        if kind == "final" and any(raw.get(k) for k in ("on", "after", "on_done", "exit")):
            raise self._error(path, "a final state takes no on, after, on_done or exit", "type")
        if kind == "compound" and not raw.get("initial"):
            raise self._error(path, "a compound state needs an initial state", "initial")
        if kind != "compound" and raw.get("initial"):
            raise self._error(path, f"a {kind} state has no initial state", "initial")
        if kind in ("atomic", "final") and raw.get("on_done"):
            raise self._error(path, "on_done needs child states", "on_done")
        node = _Node(path=path, name=name, kind=kind, parent=parent, order=len(self.states), raw=raw)
        self.states[path] = node
        ident = raw.get("id")
        if ident is not None:
            if not isinstance(ident, str) or not ident:
                raise self._error(path, f"id must be a non-empty string, not {ident!r}", "id")
            if ident in self._ids:
                raise self._error(path, f"id {ident!r} is already the id of state {self._ids[ident].path!r}", "id")
            self._ids[ident] = node
        for child_name, child_raw in children_raw.items():
            if not isinstance(child_name, str) or not child_name.strip() or any(c in child_name for c in ".#$ \t\n"):
                raise self._error(path, f"{child_name!r} cannot be a state name (no '.', '#', '$' or spaces)")
            child_path = f"{path}.{child_name}" if path else child_name
            node.children.append(self._build(child_raw, child_name, child_path, node))
        if kind == "compound":
            initial = node.child(raw["initial"]) if isinstance(raw["initial"], str) else None
            if initial is None:
                raise self._error(
                    path, f"initial state {raw['initial']!r} is not one of its children "
                    f"{[c.name for c in node.children]}", "initial",
                )
            node.initial = initial
        return node

    def _link(self, node: _Node) -> None:
        raw = node.raw
        on = raw.get("on") or {}
        if not isinstance(on, Mapping):
            raise self._error(node.path, "on must be a dict of event name -> transition", "on")
        node.on = {event: self._transitions(node, spec, f"on {event!r}") for event, spec in on.items()}
        after = raw.get("after") or {}
        if not isinstance(after, Mapping):
            raise self._error(node.path, "after must be a dict of delay -> transition", "after")
        for delay, spec in after.items():
            try:
                due = parse_duration(delay, field="after")
            except ValidationError as exc:
                raise self._error(node.path, exc.message, "after") from None
            node.after.append((due, self._transitions(node, spec, f"after {format_duration(due)}")))
        if raw.get("on_done") is not None:
            node.on_done = self._transitions(node, raw["on_done"], "on_done")
        node.entry = self._actions(node, raw.get("entry"), "entry")
        node.exit = self._actions(node, raw.get("exit"), "exit")
        if raw.get("emit") is not None:
            node.emit = self._emit(node, raw["emit"])

    def _transitions(self, node: _Node, spec: Any, label: str) -> list[_Transition]:
        items = spec if isinstance(spec, list | tuple) else [spec]
        out = []
        for item in items:
            if item is None or isinstance(item, str):
                item = {"target": item}
            if not isinstance(item, Mapping):
                raise self._error(node.path, f"{label}: a transition is a target or a dict, not {item!r}", label)
            unknown = set(item) - _TRANSITION_KEYS
            if unknown:
                raise self._error(node.path, f"{label}: unknown keys {sorted(unknown)} in a transition", label)
            raw_targets = item.get("target")
            names = [] if raw_targets is None else [raw_targets] if isinstance(raw_targets, str) else list(raw_targets)
            targets = tuple(self._resolve(node, t, label) for t in names)
            self._check_targets(node, targets, label)
            guard = None
            if item.get("guard") is not None:
                guard = self._callable(node, item["guard"], self.guards, "guard", label)
            actions = self._actions(node, item.get("actions"), label)
            out.append(_Transition(node, targets, guard, actions, label))
        return out

    def _resolve(self, node: _Node, target: Any, label: str) -> _Node:
        if not isinstance(target, str) or not target:
            raise self._error(node.path, f"{label}: a target is a state name, not {target!r}", label)
        found: _Node | None = None
        if target.startswith("#"):
            head, _, rest = target[1:].partition(".")
            found = self._walk(self._ids.get(head), rest)
        elif target.startswith("."):
            found = self._walk(node, target[1:])
        else:
            for base in node.ancestors() or [node]:
                found = self._walk(base, target)
                if found is not None:
                    break
        if found is None or found is self.root:
            raise self._error(node.path, f"{label} targets unknown state {target!r}", label)
        return found

    def _walk(self, base: _Node | None, dotted: str) -> _Node | None:
        for part in dotted.split(".") if dotted else []:
            base = base.child(part) if base is not None else None
        return base

    def _check_targets(self, node: _Node, targets: tuple[_Node, ...], label: str) -> None:
        for i, a in enumerate(targets):
            for b in targets[i + 1:]:
                lca = _lca([a, b])
                if a is b or a.within(b) or b.within(a) or lca.kind != "parallel":
                    raise self._error(
                        node.path, f"{label}: targets {a.path!r} and {b.path!r} cannot both be active "
                        "(several targets must lie in different regions of a parallel state)", label,
                    )

    def _callable(
        self, node: _Node, spec: Any, table: Mapping[str, Callable[..., Any]], what: str, label: str
    ) -> tuple[str, Callable[..., Any]]:
        if callable(spec):
            return getattr(spec, "__name__", repr(spec)), spec
        if isinstance(spec, str) and spec in table:
            return spec, table[spec]
        raise self._error(node.path, f"{label}: unknown {what} {spec!r} (known: {sorted(table)})", label)

    def _actions(self, node: _Node, spec: Any, label: str) -> tuple[tuple[str, Action], ...]:
        if spec is None:
            return ()
        items = spec if isinstance(spec, list | tuple) else [spec]
        return tuple(self._callable(node, item, self.actions, "action", label) for item in items)

    def _emit(self, node: _Node, spec: Any) -> _Emit:
        if isinstance(spec, str):
            spec = {"name": spec}
        if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str) or not spec["name"].strip():
            raise self._error(node.path, f"emit is an event name or a dict with a name, not {spec!r}", "emit")
        unknown = set(spec) - _EMIT_KEYS
        if unknown:
            raise self._error(node.path, f"emit: unknown keys {sorted(unknown)}", "emit")
        data = spec.get("data") or {}
        if not callable(data) and not isinstance(data, Mapping):
            raise self._error(node.path, "emit data is a dict or a callable (context, event) -> dict", "emit")
        key = spec.get("key")
        if key is not None and not callable(key) and not (isinstance(key, str) and key.strip()):
            raise self._error(node.path, "emit key is a string or a callable (context, event) -> str", "emit")
        return _Emit(spec["name"], data, key, spec.get("target"))

    # -- sending --------------------------------------------------------------------------------

    def stamp(self, data: Mapping[str, Any] | None) -> dict[str, Any]:
        """``data`` with this machine's name and version, so another version refuses it."""
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
        client: Garrison | None = None,
    ) -> IngestedEvent:
        """Ingest ``event`` for this statechart at ``key``, stamped with this version (fire-and-forget)."""
        from garrison.client import default_client

        self.check_event(event)
        return (client or default_client()).ingest(
            event, key, self.stamp(data), tenant=tenant, idempotency_key=idempotency_key, target=self.name
        )

    # -- the engine's side ----------------------------------------------------------------------

    def accepts(self, message: Message) -> bool:
        if message.target is not None:
            return message.target == self.name
        return message.name in self.events

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
        run = _Run(self, key, now)
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
        run = _Run(self, key, datetime.min)
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

        def value(node: _Node) -> Any:
            kids = [c for c in node.children if c.path in paths]
            if node.kind == "parallel":
                return {c.name: value(c) for c in kids}
            if not kids:
                return {}
            child = kids[0]
            return {child.name: value(child)} if any(c.path in paths for c in child.children) else child.name

        return value(self.root)


def _lca(nodes: list[_Node]) -> _Node:
    """The nearest node that is an ancestor (or the node itself) of every one of ``nodes``."""
    first, rest = nodes[0], nodes[1:]
    candidate: _Node
    for candidate in [first, *first.ancestors()]:
        if all(n is candidate or n.within(candidate) for n in rest):
            return candidate
    raise AssertionError("states of one chart always share the root")


class _Run:
    """One event's macrostep over a working copy of a snapshot (SCXML's algorithm, without history)."""

    def __init__(self, chart: Statechart, key: str, now: datetime) -> None:
        self.chart, self.key, self.now = chart, key, now
        self.active: dict[_Node, int] = {}
        self.context: dict[str, Any] = {}
        self.entries = 0
        self.done = False
        self.internal: deque[_Node] = deque()
        self.taken: list[str] = []
        self.refused: list[str] = []
        self.timers: list[TimerSpec] = []
        self.cancels: list[str] = []
        self.emits: list[EmitSpec] = []

    def load(self, snapshot: JSON, event: Message | None) -> None:
        chart = self.chart
        if snapshot is None:
            assert event is not None, "starting a machine takes the event that starts it"
            self.context = chart.initial_context(event)
            targets: set[_Node] = set()
            _add_descendants(chart.root, targets)
            targets.discard(chart.root)
            for node in sorted(targets, key=lambda n: n.order):
                self._enter(node, event)
            self._settle(event)
            return
        if not isinstance(snapshot, Mapping) or snapshot.get("machine") != chart.name:
            raise VersionMismatch(
                f"the state stored for key {self.key!r} is not a snapshot of statechart {chart.name!r}",
                automation=chart.name, key=self.key, expected=chart.version, got=None,
            )
        snap = chart.migrate(dict(snapshot), self.key)
        for path, number in dict(snap.get("entered") or {}).items():
            found = chart.states.get(path)
            if found is None or found is chart.root:
                raise VersionMismatch(
                    f"the snapshot of {chart.name!r} for key {self.key!r} is in state {path!r}, which version "
                    f"{chart.version} does not define: bump the version and add a migration",
                    automation=chart.name, key=self.key, state=path, expected=chart.version,
                    got=snapshot.get("version"),
                )
            self.active[found] = int(number)
        self.context = clone_json(snap.get("context") or {})
        self.entries = int(snap.get("entries") or 0)
        self.done = snap.get("status") == "done"

    def snapshot(self) -> dict[str, Any]:
        chart = self.chart
        paths = sorted(self.active, key=lambda n: n.order)
        return {
            "machine": chart.name, "version": chart.version, "status": "done" if self.done else "active",
            "value": chart.value_of(n.path for n in paths), "context": self.context,
            "entered": {n.path: self.active[n] for n in paths}, "entries": self.entries,
        }

    # -- dispatch -------------------------------------------------------------------------------

    def dispatch(self, event: Message) -> bool:
        if self.done:
            return False
        if event.name == TIMER_EVENT and event.target == self.chart.name:
            chosen = self._delayed(event)
        else:
            chosen = self._select(event)
        if not chosen:
            return False
        self._microstep(chosen, event)
        self._settle(event)
        return True

    def _delayed(self, event: Message) -> list[_Transition]:
        data = event.data
        node = self.chart.states.get(str(data.get("state")))
        delay = data.get("delay")
        if node is None or self.active.get(node) != data.get("entry") or not isinstance(delay, int):
            return []  # a stale timer: its state was left (its cancel lost the race) or re-entered since
        if not 0 <= delay < len(node.after):
            return []
        found = self._first_enabled(node.after[delay][1], event)
        return [found] if found else []

    def _select(self, event: Message) -> list[_Transition]:
        enabled: list[_Transition] = []
        ordered = sorted(self.active, key=lambda n: n.order)
        leaves = [n for n in ordered if not any(c in self.active for c in n.children)]
        for leaf in leaves or [self.chart.root]:
            for node in (leaf, *leaf.ancestors()):
                found = self._first_enabled(node.on.get(event.name, ()), event)
                if found is not None:
                    if found not in enabled:
                        enabled.append(found)
                    break
        kept: list[_Transition] = []
        for t in enabled:
            exits = self._exit_set(t)
            clash = [k for k in kept if exits & self._exit_set(k)]
            if all(t.source.within(k.source) for k in clash):
                kept = [k for k in kept if k not in clash] + [t]
        return kept

    def _first_enabled(self, transitions: Iterable[_Transition], event: Message) -> _Transition | None:
        for t in transitions:
            if t.guard is None:
                return t
            name, fn = t.guard
            if fn(clone_json(self.context), event):
                return t
            self.refused.append(name)
        return None

    # -- microsteps -----------------------------------------------------------------------------

    def _domain(self, t: _Transition) -> _Node | None:
        """The state whose active descendants a transition exits (None: it has no target)."""
        if not t.targets:
            return None
        if t.source.kind == "compound" and all(n.within(t.source) for n in t.targets):
            return t.source
        for ancestor in t.source.ancestors():
            if ancestor.kind == "compound" and all(n.within(ancestor) for n in t.targets):
                return ancestor
        return self.chart.root

    def _exit_set(self, t: _Transition) -> set[_Node]:
        domain = self._domain(t)
        if domain is None:
            return set()
        return {n for n in self.active if n.within(domain)}

    def _microstep(self, transitions: list[_Transition], event: Message) -> None:
        exits: set[_Node] = set()
        for t in transitions:
            exits |= self._exit_set(t)
        for node in sorted(exits, key=lambda n: n.order, reverse=True):
            self._run(node.exit, event, f"exit of {node.path}")
            number = self.active.pop(node)
            self.cancels.extend(self._timer_name(node, number, i) for i in range(len(node.after)))
        entering: set[_Node] = set()
        for t in transitions:
            self.taken.append(f"{t.source.path or '(root)'}: {t.label}"
                              + (f" -> {', '.join(n.path for n in t.targets)}" if t.targets else ""))
            self._run(t.actions, event, t.label)
            domain = self._domain(t)
            if domain is None:
                continue
            for target in t.targets:
                _add_descendants(target, entering)
            for target in t.targets:
                for ancestor in target.ancestors():
                    if ancestor is domain:
                        break
                    entering.add(ancestor)
                    if ancestor.kind == "parallel":
                        for region in ancestor.children:
                            if not any(n is region or n.within(region) for n in entering):
                                _add_descendants(region, entering)
        for node in sorted(entering, key=lambda n: n.order):
            self._enter(node, event)

    def _enter(self, node: _Node, event: Message) -> None:
        self.entries += 1
        number = self.entries
        self.active[node] = number
        self._run(node.entry, event, f"entry of {node.path}")
        for i, (delay, _) in enumerate(node.after):
            self.timers.append(TimerSpec(
                name=self._timer_name(node, number, i), due_at=self.now + delay,
                data={"state": node.path, "entry": number, "delay": i},
            ))
        if node.emit is not None:
            self.emits.append(self._emit_spec(node, number, event))
        if node.kind != "final" or node.parent is None:
            return
        parent = node.parent
        if parent is self.chart.root:
            self.done = True
            return
        self.internal.append(parent)
        grand = parent.parent
        if grand is not None and grand.kind == "parallel" and all(self._in_final(r) for r in grand.children):
            self.internal.append(grand)

    def _in_final(self, node: _Node) -> bool:
        if node.kind == "parallel":
            return all(self._in_final(c) for c in node.children)
        return any(c.kind == "final" and c in self.active for c in node.children)

    def _settle(self, event: Message) -> None:
        """Run the ``on_done`` transitions raised by entering final states, until none is left."""
        steps = 0
        while self.internal and not self.done:
            node = self.internal.popleft()
            if node not in self.active or not node.on_done:
                continue
            steps += 1
            if steps > MAX_MICROSTEPS:
                raise GarrisonError(
                    f"statechart {self.chart.name!r} did not settle after {MAX_MICROSTEPS} on_done transitions",
                    automation=self.chart.name, key=self.key, state=node.path,
                )
            found = self._first_enabled(node.on_done, event)
            if found is not None:
                self._microstep([found], event)

    def _run(self, actions: Iterable[tuple[str, Action]], event: Message, where: str) -> None:
        for name, fn in actions:
            result = fn(self.context, event)
            if result is not None:
                if not isinstance(result, Mapping):
                    raise TypeError(
                        f"action {name!r} ({where}) returned {type(result).__name__}: return a dict or None"
                    )
                self.context = dict(result)
            self.context = ensure_json(self.context, f"the context after action {name!r} ({where})")

    def _timer_name(self, node: _Node, number: int, index: int) -> str:
        return bounded(f"after:{node.path}:{number}:{index}")

    def _emit_spec(self, node: _Node, number: int, event: Message) -> EmitSpec:
        emit = node.emit
        assert emit is not None
        data = emit.data(clone_json(self.context), event) if callable(emit.data) else clone_json(dict(emit.data))
        if not isinstance(data, Mapping):
            raise TypeError(f"the emit data of state {node.path!r} must be a dict, not {type(data).__name__}")
        key = emit.key(clone_json(self.context), event) if callable(emit.key) else emit.key or self.key
        if not isinstance(key, str) or not key.strip():
            raise ValidationError(f"the emit key of state {node.path!r} must be a non-empty string", field="key")
        chart = self.chart
        source = {"machine": chart.name, "version": chart.version, "state": node.path, "entry": number}
        return EmitSpec(
            name=emit.name, key=key, data=ensure_json({**dict(data), SOURCE: source}, f"emit of {node.path!r}"),
            idempotency_key=bounded(f"statechart:{chart.name}:{self.key}:entry:{number}"), target=emit.target,
        )


def _add_descendants(node: _Node, into: set[_Node]) -> None:
    """``node`` and the states entered by default with it (initial children, every parallel region)."""
    into.add(node)
    if node.kind == "parallel":
        for region in node.children:
            _add_descendants(region, into)
    elif node.kind == "compound" and node.initial is not None:
        _add_descendants(node.initial, into)
