"""What every automation is to the engine.

Whatever its style, an automation is a name, a rule for which messages it takes, and a pure handler
``apply(state, message, ctx) -> Outcome``: the new state plus effects, which are data. The engine
commits state, cursor and effects in one transaction and dispatches the effects after commit.
Side effects run later in ``perform``, handed an :class:`EffectContext` with a stable idempotency key.
"""

from __future__ import annotations

import fnmatch
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from garrison.core.ingest import MAX_NAME, IngestedEvent
from garrison.core.jsondata import DEFAULT_MAX_NESTING, JSON, JSONRefused, check_json, check_text
from garrison.errors import DefinitionError, ValidationError


@dataclass(frozen=True, slots=True)
class Message:
    """One event as an automation sees it."""

    tenant: str
    key: str
    seq: int
    event_id: int
    name: str
    data: dict[str, Any]
    target: str | None
    created_at: datetime
    system: bool = False
    idempotency_key: str | None = None
    # The trace context the event was ingested under (W3C traceparent), when tracing is on.
    trace: str | None = None


@dataclass(frozen=True, slots=True)
class EffectSpec:
    """A side effect as data: ``kind`` is what ``perform`` dispatches on, ``payload`` is JSON."""

    kind: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class TimerSpec:
    """A durable timer to set: ``name`` is unique per entity; when ``due_at`` comes a ``garrison/timer``
    event carrying ``data`` (plus ``timer``) is ingested for the entity, targeted at its automation."""

    name: str
    due_at: datetime
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class EmitSpec:
    """An event to ingest in the transaction of the state change (exactly once)."""

    name: str
    key: str
    data: dict[str, Any]
    idempotency_key: str
    target: str | None = None
    system: bool = False


@dataclass(slots=True)
class Outcome:
    """What a handler decided. ``changed`` False means: store no new state version.

    Besides effects (run after commit), a handler may set and cancel durable timers, emit events and
    describe journey runs; the engine writes all of them in the same transaction as the state.
    """

    state: JSON
    changed: bool
    label: str
    effects: list[EffectSpec] = field(default_factory=list)
    timers: list[TimerSpec] = field(default_factory=list)
    cancel_timers: list[str] = field(default_factory=list)
    emits: list[EmitSpec] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)


def outcome_nesting(max_nesting: int) -> int:
    """How deep what a handler returns may nest: twice what ingest accepts (a state holds the data of
    the events it took), at most 256, well inside what a worker copies without running out of stack."""
    return min(2 * max_nesting, 256)


def check_outcome(outcome: Outcome, max_nesting: int = DEFAULT_MAX_NESTING) -> None:
    """Refuse, with a :class:`ValidationError` naming the part, an outcome the engine could not store
    or a worker could not apply again: a state, effect payload, timer, emitted event or run that is
    not JSON as :func:`~garrison.core.jsondata.check_json` defines it, or text with a NUL. The engine
    records the message as failed then, instead of failing the whole batch at commit. Values are
    replaced by their plain JSON copies."""
    limit = outcome_nesting(max_nesting)

    def plain(value: Any, part: str) -> Any:
        try:
            return check_json(value, max_nesting=limit)
        except JSONRefused as exc:
            at = part + ("" if not exc.path else exc.path if exc.path.startswith("[") else "." + exc.path)
            raise ValidationError(f"the handler returned {at} that {exc.reason}", field=part, path=at) from exc

    def text(value: Any, part: str) -> None:
        if not isinstance(value, str) or not value or len(value) > MAX_NAME or check_text(value):
            raise ValidationError(f"the handler returned a {part} that cannot be stored: {value!r:.80}", field=part)

    outcome.state = plain(outcome.state, "state")
    outcome.effects = [EffectSpec(e.kind, plain(e.payload, f"effects[{i}].payload"))
                       for i, e in enumerate(outcome.effects)]
    for i, t in enumerate(outcome.timers):
        text(t.name, f"timers[{i}].name")
        plain(t.data, f"timers[{i}].data")
    for i, e in enumerate(outcome.emits):
        for name in ("name", "key", "idempotency_key"):
            text(getattr(e, name), f"emits[{i}].{name}")
        if e.target is not None:
            text(e.target, f"emits[{i}].target")
        plain(e.data, f"emits[{i}].data")
    for i, run in enumerate(outcome.runs):
        for column in _RUN_JSON:
            if column in run:
                run[column] = plain(run[column], f"runs[{i}].{column}")


# The JSON columns of a journey run's row (the others are numbers, names and times).
_RUN_JSON = ("waiting", "history", "log", "result", "error")


# ``lookup(name, after_seq, before_seq)``: the key's events with after_seq < seq < before_seq, in order,
# untargeted only; ``name`` an exact name, a glob, or None for every name. The log below a message is
# immutable, so a handler that reads it stays deterministic.
Lookup = Callable[[str | None, int, int], list[Message]]

# ``read(automation, keys)``: the committed ``(state, version)`` of other entities of the tenant, read in
# the engine's own transaction (a key with no stored state is absent). For styles whose handlers look at
# other entities (node views); never this batch's writes, which are stored only when it commits.
Reader = Callable[[str, Sequence[str]], Mapping[str, tuple[Any, int]]]


@dataclass(frozen=True, slots=True)
class ApplyContext:
    """What a handler may know besides state and message.

    ``now`` is when the message was ingested (so a replay sees the same time); ``version`` is the
    entity's stored version (0: no snapshot yet); ``replay`` is True when rebuilding from the log.
    """

    tenant: str
    key: str
    now: datetime
    version: int = 0
    replay: bool = False
    lookup: Lookup | None = None
    max_payload_bytes: int = 256 * 1024
    read: Reader | None = None
    max_nesting: int = DEFAULT_MAX_NESTING


class EffectClient(Protocol):
    """The calls effect code makes on the client that performs it (a :class:`garrison.Garrison`, which
    has many more): send events, read an entity's committed state."""

    def ingest(
        self, name: str, key: str, data: Mapping[str, Any] | None = None, *, tenant: str | None = None,
        idempotency_key: str | None = None, target: str | None = None, system: bool = False,
    ) -> IngestedEvent: ...

    def ingest_many(self, events: Iterable[Mapping[str, Any]]) -> list[IngestedEvent]: ...

    def state(self, automation: str, key: str, *, tenant: str | None = None) -> Any: ...


@dataclass(frozen=True, slots=True)
class EffectContext:
    """Handed to ``perform``: where the effect came from, and a client to send with."""

    tenant: str
    automation: str
    key: str
    effect_id: int
    idempotency_key: str
    client: EffectClient
    final_attempt: bool = True


@dataclass(frozen=True, slots=True)
class Route:
    """Which messages an automation takes, as data: every message targeted at it, and the untargeted
    messages whose name equals or fnmatch-matches one of ``names`` (None: every name).

    A route may take more than :meth:`Automation.accepts` (never less): the fleet registry stores it, so a
    worker that lacks the automation (a rolling deploy) knows which messages wait for it, and the holder's
    own ``accepts`` decides at catch-up."""

    names: tuple[str, ...] | None = None

    def takes(self, automation: str, message: Message) -> bool:
        if message.target is not None:
            return message.target == automation
        if self.names is None:
            return True
        name = message.name
        return any(name == p or fnmatch.fnmatchcase(name, p) for p in self.names)

    def to_json(self) -> dict[str, Any]:
        return {"names": None if self.names is None else sorted(self.names)}

    @classmethod
    def from_json(cls, value: Any) -> Route:
        names = value.get("names") if isinstance(value, Mapping) else None
        return cls(None if names is None else tuple(str(n) for n in names))


ON_FAILURE = ("skip", "halt")
EFFECT_ORDER = ("entity", "parallel")


class Automation(ABC):
    """Base of every authoring style. Subclasses set ``style`` and implement the three hooks.

    ``on_failure``: what a message whose handler raises does to the entity. ``"skip"`` (the default):
    the failure is recorded (retryable) and the entity goes on with its next message. ``"halt"``
    (go-state's Run): the entity stops at the failed message; its later messages wait, in order, until the
    failure is retried or skipped. ``effects``: ``"entity"`` (the default) performs one entity's effects one
    after another in the order they were made, as casern runs listeners and go-state feeds commands back;
    ``"parallel"`` lets them run at once, for throughput.
    """

    style: str = "automation"
    # Pulses defined in code next to the automation (``@machine.pulse``); beat syncs them to SQL.
    pulses: tuple[Any, ...] = ()
    # False for a style whose state may also change outside the event log (node state's ``set`` from a
    # script): ``replay`` cannot rebuild it from the log and skips it, and ``check`` skips the versions
    # that no message produced.
    replayable: bool = True

    def __init__(self, name: str, *, on_failure: str = "skip", effects: str = "entity") -> None:
        if not isinstance(name, str) or not name.strip():
            raise DefinitionError("an automation needs a non-empty name", automation=name)
        if any(ch in name for ch in " \t\n"):
            raise DefinitionError("an automation name cannot contain whitespace", automation=name)
        if on_failure not in ON_FAILURE:
            raise DefinitionError(f"on_failure must be one of {ON_FAILURE}, not {on_failure!r}", automation=name,
                                  part="on_failure")
        if effects not in EFFECT_ORDER:
            raise DefinitionError(f"effects must be one of {EFFECT_ORDER}, not {effects!r}", automation=name,
                                  part="effects")
        self.name = name
        self.on_failure = on_failure
        self.effects = effects
        _DEFINED[name] = self

    @abstractmethod
    def accepts(self, message: Message) -> bool:
        """Whether this automation takes the message. Must depend only on its ``name`` and ``target``,
        and never take a message its :meth:`route` does not."""

    def route(self) -> Route:
        """The messages this automation takes, as data (see :class:`Route`). The default, every name, is
        always safe; a style narrows it so workers without it hold back fewer messages."""
        return Route(None)

    @abstractmethod
    def apply(self, state: JSON, message: Message, ctx: ApplyContext) -> Outcome:
        """Pure: compute the new state and the effects. Raising marks the message failed."""

    def perform(self, effect: EffectSpec, ctx: EffectContext) -> None:
        """Run one side effect after commit. Raising makes the worker retry it with backoff."""
        raise NotImplementedError(f"{type(self).__name__} {self.name!r} has no effect {effect.kind!r}")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


# Every automation defined in this process (imported), registered or not: an event targeted at one of them
# is not refused as unknown (a listener sends to a machine its worker imports without running it).
_DEFINED: weakref.WeakValueDictionary[str, Automation] = weakref.WeakValueDictionary()


def defined(name: str) -> Automation | None:
    """The automation of that name defined in this process, if any (registered or not)."""
    return _DEFINED.get(name)


def preferences_for(
    base: Mapping[str, Any], per_tenant: Mapping[str, Mapping[str, Any]], tenant: str
) -> dict[str, Any]:
    merged = dict(base)
    merged.update(per_tenant.get(tenant, {}))
    return merged


Callback = Callable[..., Any]
