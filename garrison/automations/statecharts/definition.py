"""The definition of a statechart: its state tree parsed and checked once, when the chart is declared.

:class:`ChartDefinition` turns the ``states`` dict (see :mod:`garrison.automations.statecharts.chart` for the
format) into linked :class:`StateNode` objects with their transitions, delays, actions and emits resolved,
so a bad definition fails at import with a :class:`~garrison.errors.DefinitionError` naming the state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from garrison.core.contract import Message
from garrison.core.timers import TIMER_EVENT
from garrison.durations import format_duration, parse_duration
from garrison.errors import DefinitionError, ValidationError

Guard = Callable[[dict[str, Any], Message], Any]
Action = Callable[[dict[str, Any], Message], Any]
Migration = Callable[[dict[str, Any]], dict[str, Any]]

_STATE_KEYS = frozenset({"type", "initial", "states", "on", "after", "on_done", "entry", "exit", "emit", "id"})
_TRANSITION_KEYS = frozenset({"target", "guard", "actions"})
_EMIT_KEYS = frozenset({"name", "data", "key", "target"})
_TYPES = ("atomic", "compound", "parallel", "final")


@dataclass(eq=False, slots=True)
class Transition:
    source: StateNode
    targets: tuple[StateNode, ...]
    guard: tuple[str, Guard] | None
    actions: tuple[tuple[str, Action], ...]
    label: str


@dataclass(frozen=True, slots=True)
class StateEmit:
    name: str
    data: Mapping[str, Any] | Callable[[dict[str, Any], Message], Any]
    key: str | Callable[[dict[str, Any], Message], Any] | None
    target: str | None


@dataclass(eq=False, slots=True)
class StateNode:
    path: str
    name: str
    kind: str
    parent: StateNode | None
    order: int
    raw: Mapping[str, Any]
    children: list[StateNode] = field(default_factory=list)
    initial: StateNode | None = None
    on: dict[str, list[Transition]] = field(default_factory=dict)
    after: list[tuple[timedelta, list[Transition]]] = field(default_factory=list)
    on_done: list[Transition] = field(default_factory=list)
    entry: tuple[tuple[str, Action], ...] = ()
    exit: tuple[tuple[str, Action], ...] = ()
    emit: StateEmit | None = None

    def ancestors(self) -> list[StateNode]:
        """Proper ancestors, nearest first, up to the root."""
        out, node = [], self.parent
        while node is not None:
            out.append(node)
            node = node.parent
        return out

    def within(self, other: StateNode) -> bool:
        """True when this node is a proper descendant of ``other``."""
        return any(a is other for a in self.ancestors())

    def child(self, name: str) -> StateNode | None:
        return next((c for c in self.children if c.name == name), None)

    def __repr__(self) -> str:
        return f"<state {self.path or '(root)'}>"


class ChartDefinition:
    """The state tree of statechart ``name``: every state by path, the root, and the events it handles."""

    def __init__(
        self,
        name: str,
        *,
        initial: str | None,
        states: Mapping[str, Mapping[str, Any]],
        on: Mapping[str, Any] | None,
        guards: Mapping[str, Guard],
        actions: Mapping[str, Action],
        root_id: str | None = None,
        root_type: str = "compound",
    ) -> None:
        self.name = name
        self.guards = guards
        self.actions = actions
        self.states: dict[str, StateNode] = {}
        self._ids: dict[str, StateNode] = {}
        # ``root_id``: targets may name states from the root, as xstate's "#machine.a.b" does.
        if root_type not in ("compound", "parallel"):
            raise self._error("", f"the chart itself is compound or parallel, not {root_type!r}", "type")
        root_raw = {"type": root_type, "initial": initial, "states": states, "on": on or {},
                    **({"id": root_id} if root_id else {})}
        self.root = self._build(root_raw, "", "", None)
        for node in self.states.values():
            self._link(node)
        self.events = frozenset(e for node in self.states.values() for e in node.on)
        for event in self.events:
            if not isinstance(event, str) or not event.strip() or event == TIMER_EVENT:
                raise DefinitionError(f"{event!r} cannot be an event name", automation=name, part="on")

    def _error(self, node_path: str, message: str, part: str | None = None) -> DefinitionError:
        where = f"state {node_path!r}" if node_path else "the root state"
        return DefinitionError(f"{where}: {message}", automation=self.name, state=node_path or "(root)", part=part)

    def _build(self, raw: Any, name: str, path: str, parent: StateNode | None) -> StateNode:
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
        node = StateNode(path=path, name=name, kind=kind, parent=parent, order=len(self.states), raw=raw)
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

    def _link(self, node: StateNode) -> None:
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

    def _transitions(self, node: StateNode, spec: Any, label: str) -> list[Transition]:
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
            out.append(Transition(node, targets, guard, actions, label))
        return out

    def _resolve(self, node: StateNode, target: Any, label: str) -> StateNode:
        if not isinstance(target, str) or not target:
            raise self._error(node.path, f"{label}: a target is a state name, not {target!r}", label)
        found: StateNode | None = None
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

    def _walk(self, base: StateNode | None, dotted: str) -> StateNode | None:
        for part in dotted.split(".") if dotted else []:
            base = base.child(part) if base is not None else None
        return base

    def _check_targets(self, node: StateNode, targets: tuple[StateNode, ...], label: str) -> None:
        for i, a in enumerate(targets):
            for b in targets[i + 1:]:
                lca = _lca([a, b])
                if a is b or a.within(b) or b.within(a) or lca.kind != "parallel":
                    raise self._error(
                        node.path, f"{label}: targets {a.path!r} and {b.path!r} cannot both be active "
                        "(several targets must lie in different regions of a parallel state)", label,
                    )

    def _callable(
        self, node: StateNode, spec: Any, table: Mapping[str, Callable[..., Any]], what: str, label: str
    ) -> tuple[str, Callable[..., Any]]:
        if callable(spec):
            return getattr(spec, "__name__", repr(spec)), spec
        if isinstance(spec, str) and spec in table:
            return spec, table[spec]
        raise self._error(node.path, f"{label}: unknown {what} {spec!r} (known: {sorted(table)})", label)

    def _actions(self, node: StateNode, spec: Any, label: str) -> tuple[tuple[str, Action], ...]:
        if spec is None:
            return ()
        items = spec if isinstance(spec, list | tuple) else [spec]
        return tuple(self._callable(node, item, self.actions, "action", label) for item in items)

    def _emit(self, node: StateNode, spec: Any) -> StateEmit:
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
        return StateEmit(spec["name"], data, key, spec.get("target"))


def _lca(nodes: list[StateNode]) -> StateNode:
    """The nearest node that is an ancestor (or the node itself) of every one of ``nodes``."""
    first, rest = nodes[0], nodes[1:]
    candidate: StateNode
    for candidate in [first, *first.ancestors()]:
        if all(n is candidate or n.within(candidate) for n in rest):
            return candidate
    raise AssertionError("states of one chart always share the root")
