"""What passes between the nodes of a system: events, with their envelope of causal metadata, their
checks and the patterns handlers match them by; and views, the committed state a node reads of the others
through selectors.

None of this defines a system; ``Nodes``, ``Node`` and ``NodeContext`` do, in
:mod:`garrison.automations.nodes.system`. What this module and the caller half
(:mod:`garrison.automations.nodes.state`) need of them is stated by :class:`SystemSpec` and :class:`NodeSpec`.
"""

from __future__ import annotations

import inspect
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from garrison.core.contract import Message
from garrison.core.jsondata import JSON, clone_json, ensure_json
from garrison.errors import DefinitionError, ValidationError

__all__ = [
    "ID_NAMESPACE", "Delivery", "NodeEvent", "NodeSnapshot", "NodeSpec", "Pattern", "Predicate", "Reader", "Selector",
    "SystemSpec", "View", "Views", "call_setter", "check_payload", "check_type", "compile_pattern", "select",
    "takes_views",
]

Selector = Callable[[Any], Any] | str | None
# ``reader(names)``: the committed ``(state, version)`` of those of ``names`` that have a stored state.
Reader = Callable[[Sequence[str]], Mapping[str, tuple[JSON, int]]]
Predicate = Callable[["NodeEvent"], bool]

ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "garrison:nodes")


class NodeSpec(Protocol):
    """A node as views and the caller half see it (a :class:`~garrison.automations.nodes.system.Node`)."""

    @property
    def name(self) -> str: ...

    @property
    def system(self) -> SystemSpec: ...

    def initial_state(self) -> JSON: ...


class SystemSpec(Protocol):
    """A node system as views and the caller half see it (a :class:`~garrison.automations.nodes.system.Nodes`)."""

    @property
    def name(self) -> str: ...

    @property
    def nodes(self) -> Mapping[str, NodeSpec]: ...

    def subscribers(self, event: NodeEvent) -> tuple[str, ...]: ...

    def check_receiver(self, name: str, event: NodeEvent) -> NodeSpec: ...


# -- patterns ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pattern:
    """Which event types a handler takes: a compiled type pattern, or a predicate on the whole event."""

    text: str
    regex: re.Pattern[str] | None = None
    predicate: Predicate | None = None

    def matches(self, event: NodeEvent) -> bool:
        if self.predicate is not None:
            return bool(self.predicate(event))
        assert self.regex is not None
        return self.regex.fullmatch(event.type) is not None


def compile_pattern(pattern: str | Predicate, *, where: str = "") -> Pattern:
    """``order.created`` exactly; ``order.*`` one more segment; ``order.**`` one or more; ``{a,b}.created``
    either alternative (an alternative may hold wildcards, not braces); a callable is a predicate."""
    if callable(pattern):
        return Pattern(getattr(pattern, "__name__", repr(pattern)), predicate=pattern)
    if not isinstance(pattern, str) or not pattern.strip():
        raise DefinitionError("a handler pattern is a non-empty string or a predicate", automation=where,
                              part=repr(pattern))
    out: list[str] = []
    rest = pattern
    while rest:
        brace = min((i for i in (rest.find("{"), rest.find("}")) if i >= 0), default=-1)
        if brace < 0:
            out.append(_glob(rest))
            break
        out.append(_glob(rest[:brace]))
        if rest[brace] == "}":
            raise DefinitionError(f"pattern {pattern!r} closes a brace it never opened", automation=where,
                                  part=pattern)
        end = rest.find("}", brace)
        if end < 0 or "{" in rest[brace + 1 : end]:
            raise DefinitionError(f"pattern {pattern!r} has an unclosed or nested brace", automation=where,
                                  part=pattern)
        options = rest[brace + 1 : end].split(",")
        if any(not o.strip() for o in options):
            raise DefinitionError(f"pattern {pattern!r} has an empty alternative", automation=where, part=pattern)
        out.append("(?:" + "|".join(_glob(o.strip()) for o in options) + ")")
        rest = rest[end + 1 :]
    return Pattern(pattern, regex=re.compile("".join(out)))


def _glob(text: str) -> str:
    return "".join(
        ".+" if part == "**" else "[^.]+" if part == "*" else re.escape(part)
        for part in re.split(r"(\*\*|\*)", text)
    )


# -- events ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeEvent:
    """An event between nodes. ``correlation_id`` is shared by a whole chain (a fresh broadcast or send
    starts one with its own id); ``causation_id`` is the id of the event whose handler sent this one."""

    type: str
    payload: JSON
    id: str
    correlation_id: str
    timestamp: datetime
    causation_id: str | None = None
    sender: str | None = None

    def to_data(self) -> dict[str, Any]:
        """The garrison event's data: the payload inside an envelope of causal metadata."""
        return {
            "payload": self.payload, "id": self.id, "causation_id": self.causation_id,
            "correlation_id": self.correlation_id, "timestamp": self.timestamp.isoformat(), "sender": self.sender,
        }

    @classmethod
    def from_message(cls, message: Message) -> NodeEvent:
        """Read the envelope back. An event ingested by hand (``garrison ingest``, no envelope) is its
        own payload, with an id made from the stored event's id."""
        data = message.data
        if isinstance(data.get("id"), str) and "payload" in data:
            stamp = data.get("timestamp")
            return cls(
                type=message.name, payload=data["payload"], id=data["id"],
                correlation_id=data.get("correlation_id") or data["id"],
                causation_id=data.get("causation_id"), sender=data.get("sender"),
                timestamp=datetime.fromisoformat(stamp) if isinstance(stamp, str) else message.created_at,
            )
        own = f"event-{message.event_id}"
        return cls(type=message.name, payload=data, id=own, correlation_id=own, timestamp=message.created_at)


@dataclass(frozen=True, slots=True)
class Delivery:
    """What a broadcast or send did: the event, and the nodes it goes to (in definition order)."""

    event: NodeEvent
    nodes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NodeSnapshot:
    """A node's committed state and its version (0: never stored, the state is the node's initial one)."""

    node: str
    state: JSON
    version: int


def check_type(type: Any) -> str:
    if not isinstance(type, str) or not type.strip() or len(type) > 255:
        raise ValidationError("an event type is a non-empty string of at most 255 characters", field="type")
    return type


def check_payload(payload: JSON) -> JSON:
    try:
        return ensure_json({} if payload is None else payload, "the payload")
    except TypeError as exc:
        raise ValidationError(str(exc), field="payload") from exc


# -- views -------------------------------------------------------------------------------------------


def select(state: JSON, selector: Selector) -> Any:
    """Apply a selector to (a copy of) a state: ``None`` gives the whole state, a callable is called with
    it, a string is a dotted path (``"orders.o-1.status"``; list items by index) and gives ``None`` where
    the path leads nowhere. Use a callable for keys that contain dots."""
    value = clone_json(state)
    if selector is None:
        return value
    if callable(selector):
        return selector(value)
    if not isinstance(selector, str):
        raise ValidationError(f"a selector is a callable or a dotted path, not {type(selector).__name__}",
                              field="selector")
    for part in selector.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.lstrip("-").isdigit() and -len(value) <= int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


class View:
    """One other node's committed state, as ``views[name]`` gives it."""

    def __init__(self, views: Views, name: str) -> None:
        self._views = views
        self.name = name

    def get(self, selector: Selector = None) -> Any:
        """The node's committed state through ``selector``; ``None`` for the viewing node or an unknown one."""
        return self._views.collect({self.name: selector})[self.name]


class Views:
    """Read-only windows on the committed state of the other nodes of a system.

    Each node is read at most once per ``Views`` (one handler call, one ``set``), so two reads of a node
    agree. A node that was never stored reads as its initial state.
    """

    def __init__(self, system: SystemSpec, me: str | None, reader: Reader) -> None:
        self._system = system
        self._me = me
        self._reader = reader
        self._seen: dict[str, JSON] = {}

    def __getitem__(self, name: str) -> View:
        return View(self, name)

    def visible(self, name: str) -> bool:
        return name != self._me and name in self._system.nodes

    def collect(self, selectors: Mapping[str, Selector]) -> dict[str, Any]:
        """``{node: selector}`` to ``{node: selected value}`` in one read; ``None`` for self and unknown nodes."""
        missing = [n for n in selectors if self.visible(n) and n not in self._seen]
        if missing:
            found = self._reader(missing)
            for name in missing:
                self._seen[name] = found[name][0] if name in found else self._system.nodes[name].initial_state()
        return {n: select(self._seen[n], s) if self.visible(n) else None for n, s in selectors.items()}


def call_setter(fn: Callable[..., Any] | Mapping[str, Any], state: JSON, views: Views, node: str) -> JSON:
    """Apply what ``set`` was given: a function is called with ``(state, views)`` when it takes two
    positional parameters (or ``*args``), else with ``(state)``; a mapping is the new state itself
    (Happen's ``state.set({...})``: it replaces the whole state, it is not merged). The result must be
    JSON; anything else is refused with a :class:`ValidationError` naming ``state``."""
    if isinstance(fn, Mapping):
        result: Any = clone_json(dict(fn))
    elif callable(fn):
        result = fn(state, views) if takes_views(fn) else fn(state)
    else:
        raise ValidationError(
            f"set takes a function of the state, or a dict that replaces it, not {type(fn).__name__}",
            field="state", node=node,
        )
    try:
        return ensure_json(result, f"the state set on node {node!r}")
    except TypeError as exc:
        raise ValidationError(str(exc), field="state", node=node) from exc


def takes_views(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: one argument
        return False
    positional = 0
    for p in params:
        if p.kind is p.VAR_POSITIONAL:
            return True
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            positional += 1
    return positional >= 2
