"""One event applied to a statechart snapshot: SCXML's macrostep (transitions, exit and entry actions,
``after`` timers, entry emits, ``on_done``), over a working copy the caller turns back into a snapshot."""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Protocol

from garrison.automations.statecharts.definition import Action, StateNode, Transition
from garrison.core.contract import EmitSpec, Message, TimerSpec
from garrison.core.jsondata import JSON, clone_json, ensure_json
from garrison.core.namespace import reserved
from garrison.core.timers import TIMER_EVENT
from garrison.errors import GarrisonError, ValidationError, VersionMismatch

SOURCE = "$source"
MAX_MICROSTEPS = 100


def bounded(text: str, limit: int = 255) -> str:
    """``text`` when it fits a 255-character column, else a stable digest of it (same text, same key)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit - 42]}~{hashlib.sha1(text.encode()).hexdigest()}"


class Chart(Protocol):
    """What a macrostep needs of its statechart (a :class:`~garrison.automations.statecharts.chart.Statechart`):
    the definition's states, and the chart's context, migrations and state value."""

    name: str
    version: int
    root: StateNode
    states: dict[str, StateNode]

    def initial_context(self, event: Message) -> dict[str, Any]: ...

    def migrate(self, snapshot: dict[str, Any], key: str) -> dict[str, Any]: ...

    def value_of(self, active: Iterable[str]) -> Any: ...


class Macrostep:
    """One event's macrostep over a working copy of a snapshot (SCXML's algorithm, without history)."""

    def __init__(self, chart: Chart, key: str, now: datetime) -> None:
        self.chart, self.key, self.now = chart, key, now
        self.active: dict[StateNode, int] = {}
        self.context: dict[str, Any] = {}
        self.entries = 0
        self.done = False
        self.internal: deque[StateNode] = deque()
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
            targets: set[StateNode] = set()
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

    def _delayed(self, event: Message) -> list[Transition]:
        data = event.data
        node = self.chart.states.get(str(data.get("state")))
        delay = data.get("delay")
        if node is None or self.active.get(node) != data.get("entry") or not isinstance(delay, int):
            return []  # a stale timer: its state was left (its cancel lost the race) or re-entered since
        if not 0 <= delay < len(node.after):
            return []
        found = self._first_enabled(node.after[delay][1], event)
        return [found] if found else []

    def _select(self, event: Message) -> list[Transition]:
        enabled: list[Transition] = []
        ordered = sorted(self.active, key=lambda n: n.order)
        leaves = [n for n in ordered if not any(c in self.active for c in n.children)]
        for leaf in leaves or [self.chart.root]:
            for node in (leaf, *leaf.ancestors()):
                found = self._first_enabled(node.on.get(event.name, ()), event)
                if found is not None:
                    if found not in enabled:
                        enabled.append(found)
                    break
        kept: list[Transition] = []
        for t in enabled:
            exits = self._exit_set(t)
            clash = [k for k in kept if exits & self._exit_set(k)]
            if all(t.source.within(k.source) for k in clash):
                kept = [k for k in kept if k not in clash] + [t]
        return kept

    def _first_enabled(self, transitions: Iterable[Transition], event: Message) -> Transition | None:
        for t in transitions:
            if t.guard is None:
                return t
            name, fn = t.guard
            if fn(clone_json(self.context), event):
                return t
            self.refused.append(name)
        return None

    # -- microsteps -----------------------------------------------------------------------------

    def _domain(self, t: Transition) -> StateNode | None:
        """The state whose active descendants a transition exits (None: it has no target)."""
        if not t.targets:
            return None
        if t.source.kind == "compound" and all(n.within(t.source) for n in t.targets):
            return t.source
        for ancestor in t.source.ancestors():
            if ancestor.kind == "compound" and all(n.within(ancestor) for n in t.targets):
                return ancestor
        return self.chart.root

    def _exit_set(self, t: Transition) -> set[StateNode]:
        domain = self._domain(t)
        if domain is None:
            return set()
        return {n for n in self.active if n.within(domain)}

    def _microstep(self, transitions: list[Transition], event: Message) -> None:
        exits: set[StateNode] = set()
        for t in transitions:
            exits |= self._exit_set(t)
        for node in sorted(exits, key=lambda n: n.order, reverse=True):
            self._run(node.exit, event, f"exit of {node.path}")
            number = self.active.pop(node)
            self.cancels.extend(self._timer_name(node, number, i) for i in range(len(node.after)))
        entering: set[StateNode] = set()
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

    def _enter(self, node: StateNode, event: Message) -> None:
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
            if grand is self.chart.root:  # a parallel chart is done when every region is final
                self.done = True
            else:
                self.internal.append(grand)

    def _in_final(self, node: StateNode) -> bool:
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

    def _timer_name(self, node: StateNode, number: int, index: int) -> str:
        return bounded(f"after:{node.path}:{number}:{index}")

    def _emit_spec(self, node: StateNode, number: int, event: Message) -> EmitSpec:
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
            idempotency_key=reserved("statechart", chart.name, self.key, "entry", number), target=emit.target,
        )


def _add_descendants(node: StateNode, into: set[StateNode]) -> None:
    """``node`` and the states entered by default with it (initial children, every parallel region)."""
    into.add(node)
    if node.kind == "parallel":
        for region in node.children:
            _add_descendants(region, into)
    elif node.kind == "compound" and node.initial is not None:
        _add_descendants(node.initial, into)
