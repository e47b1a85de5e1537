"""Node state, after Happen: nodes that own a JSON state, read each other through views, and talk by events.

A :class:`Nodes` system is one automation; each node is one of its entities (the key is the node's name),
so a node's state, version and history are ordinary garrison rows that ``garrison inspect NODE`` shows.

- ``node.state.get(selector)`` reads; ``node.state.set(fn)`` applies ``fn(state)`` or
  ``fn(state, views)`` and stores the whole result as the next version. From outside the worker a set is
  one transaction holding the node's per-key lock (the lock the worker takes), so concurrent sets never
  lose an update, unlike the seed's read-modify-write.
- ``views[other].get(selector)`` and ``views.collect({node: selector})`` read other nodes' committed state;
  the node itself and a node the system does not define give ``None`` (the seed's null rules).
- Handlers match event types by exact name, ``*`` (one dot-separated segment), ``**`` (the rest),
  alternatives (``{order,invoice}.created``) or a predicate on the event. ``broadcast`` sends to every node
  with a matching handler, ``send`` to one; events carry an id, a causation id, a correlation id and a
  timestamp. A handler's sends are written in the transaction of its state change, exactly once.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from garrison.automations.nodes.events import (
    ID_NAMESPACE,
    Delivery,
    NodeEvent,
    Pattern,
    Predicate,
    Reader,
    Selector,
    Views,
    call_setter,
    check_payload,
    check_type,
    compile_pattern,
    select,
)
from garrison.automations.nodes.state import NodeState, deliver, read_committed, views_for
from garrison.core.contract import ApplyContext, Automation, EmitSpec, Message, Outcome, Route
from garrison.core.ingest import validate
from garrison.core.jsondata import JSON, clone_json, ensure_json, json_equal
from garrison.core.namespace import reserved
from garrison.core.runtime import Runtime, default_client
from garrison.errors import DefinitionError, UnknownNode, ValidationError

__all__ = ["Handler", "LocalState", "Node", "NodeContext", "Nodes"]

HandlerFn = Callable[["NodeEvent", "NodeContext"], Any]

MAX_NODE_NAME = 200  # leaves room in the 255 characters of an idempotency key (``node:<uuid>:<node>``)


# -- definitions -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Handler:
    patterns: tuple[Pattern, ...]
    fn: HandlerFn

    def matches(self, event: NodeEvent) -> bool:
        return any(p.matches(event) for p in self.patterns)


class Node:
    """One node of a system: its name, its initial state and its handlers."""

    def __init__(self, system: Nodes, name: str, initial: JSON) -> None:
        self.system = system
        self.name = name
        self.initial = initial
        self.handlers: list[Handler] = []

    def on(self, *patterns: str | Predicate) -> Callable[[HandlerFn], HandlerFn]:
        """Register ``fn(event, node)`` for events matching any of ``patterns``. Handlers of a node that
        match one event run in registration order, each seeing the state the previous one set."""
        if not patterns:
            raise DefinitionError("on() needs at least one pattern", automation=self.system.name, part=self.name)
        compiled = tuple(compile_pattern(p, where=self.system.name) for p in patterns)

        def register(fn: HandlerFn) -> HandlerFn:
            if not callable(fn):
                raise DefinitionError("a handler must be callable", automation=self.system.name, part=self.name)
            refuse_suspending(fn, self.system.name, self.name)
            self.handlers.append(Handler(compiled, fn))
            return fn

        return register

    def handlers_for(self, event: NodeEvent) -> list[Handler]:
        return [h for h in self.handlers if h.matches(event)]

    def initial_state(self) -> JSON:
        return clone_json(self.initial)

    @property
    def state(self) -> NodeState:
        """This node's state from outside the worker: ``get``, ``snapshot`` and the atomic ``set``."""
        return NodeState(self)

    def views(self, *, client: Runtime | None = None, tenant: str | None = None) -> Views:
        """Views from this node (itself reads as ``None``), on committed state, outside the worker."""
        return views_for(self, client, tenant)

    def __repr__(self) -> str:
        return f"<Node {self.system.name}/{self.name}>"


class NodeContext:
    """What a handler is handed with the event: its node's state (``get`` / ``set``), views of the other
    nodes, and ``broadcast`` / ``send``, whose events are written with the state change, exactly once."""

    def __init__(self, system: Nodes, node: Node, event: NodeEvent, actx: ApplyContext, state: JSON,
                 reader: Reader, message_id: int) -> None:
        self.system = system
        self.node = node
        self.event = event
        self.tenant = actx.tenant
        self.version = actx.version
        self.views = Views(system, node.name, reader)
        self.state = LocalState(node.name, state, self.views)
        self._actx = actx
        self._message_id = message_id
        self._sent = 0
        self.emits: list[EmitSpec] = []

    @property
    def name(self) -> str:
        return self.node.name

    def broadcast(self, type: str, payload: JSON = None) -> Delivery:
        """Send to every node with a handler for ``type`` (this one too, if it has one)."""
        event = self._new_event(type, payload)
        nodes = self.system.subscribers(event)
        self._emit(event, nodes)
        return Delivery(event, nodes)

    def send(self, node: str, type: str, payload: JSON = None) -> Delivery:
        """Send to one node, which must have a handler for ``type``."""
        event = self._new_event(type, payload)
        self.system.check_receiver(node, event)
        self._emit(event, (node,))
        return Delivery(event, (node,))

    def _new_event(self, type: str, payload: JSON) -> NodeEvent:
        # Derived from the handled event's row id and a counter: re-running the same apply (a transaction
        # rolled back by a killed worker) makes the same ids, so nothing can be delivered twice.
        self._sent += 1
        return NodeEvent(
            type=check_type(type), payload=check_payload(payload),
            id=str(uuid.uuid5(ID_NAMESPACE, f"{self.tenant}:{self.system.name}:{self._message_id}:{self._sent}")),
            causation_id=self.event.id, correlation_id=self.event.correlation_id,
            timestamp=self._actx.now, sender=self.node.name,
        )

    def _emit(self, event: NodeEvent, nodes: Sequence[str]) -> None:
        for name in nodes:
            once = reserved("node", event.id, name)  # one row per (event, node), whatever retries the caller makes
            checked = validate(
                event.type, name, event.to_data(), tenant=self.tenant, target=self.system.name,
                idempotency_key=once, max_payload_bytes=self._actx.max_payload_bytes,
                max_nesting=self._actx.max_nesting,
            )
            self.emits.append(EmitSpec(
                name=checked.name, key=checked.key, data=checked.data, target=checked.target, idempotency_key=once,
            ))


def refuse_suspending(fn: Callable[..., Any], system: str, node: str) -> None:
    """Refuse a generator or ``async`` handler when it is defined.

    Happen's progress-yielding handlers (``async function*``) stream each ``yield`` to the sender while
    the handler runs. A garrison handler runs inside the transaction that stores its message's outcome:
    nothing it yielded could be seen before that commit, so "progress" would only ever arrive with the
    result, and calling such a function here would run none of its body. Long work is split into
    messages instead (a handler that does one chunk, stores its progress and sends itself the next one),
    each chunk committed and visible as it ends; see docs/node-state.md."""
    kind = ("an async generator" if inspect.isasyncgenfunction(fn) else "a generator" if inspect.isgeneratorfunction(fn)
            else "an async function" if inspect.iscoroutinefunction(fn) else None)
    if kind is not None:
        name = getattr(fn, "__name__", repr(fn))
        raise DefinitionError(
            f"handler {name!r} of node {node!r} is {kind}: a handler runs to its end in one transaction, so it "
            "cannot yield progress or await; split long work into messages the node sends itself "
            "(see docs/node-state.md, 'Long work in chunks')",
            automation=system, part=node, handler=name,
        )


def check_returned(value: Any, fn: Callable[..., Any], node: str) -> None:
    """A handler that slipped past :func:`refuse_suspending` (a callable object wrapping a generator
    function) and returned a generator or a coroutine fails its message instead of being skipped."""
    if inspect.isgenerator(value) or inspect.iscoroutine(value) or inspect.isasyncgen(value):
        if not inspect.isasyncgen(value):
            value.close()  # no "never awaited" warning; an async generator that never started needs nothing
        raise TypeError(
            f"handler {getattr(fn, '__name__', repr(fn))!r} of node {node!r} returned a {type(value).__name__} "
            "instead of running: generator and async handlers are not supported (see docs/node-state.md)"
        )


class LocalState:
    """A handler's view of its own node: the state as this message has left it so far."""

    def __init__(self, node: str, state: JSON, views: Views) -> None:
        self._node = node
        self.value = state
        self._views = views

    def get(self, selector: Selector = None) -> Any:
        return select(self.value, selector)

    def set(self, fn: Callable[..., Any] | Mapping[str, Any]) -> JSON:
        """Replace the state with ``fn(state)``, ``fn(state, views)`` or a dict (the new state itself);
        stored when the message commits."""
        self.value = call_setter(fn, clone_json(self.value), self._views, self._node)
        return clone_json(self.value)


class Nodes(Automation):
    """A system of nodes (one automation; one entity per node, keyed by the node's name).

    ::

        shop = Nodes("shop")
        orders = shop.node("orders", initial={"orders": {}})
        dashboard = shop.node("dashboard", initial={"seen": 0})

        @orders.on("order.{created,updated}")
        def keep(event, node):
            node.state.set(lambda s: {**s, "orders": {**s["orders"], event.payload["id"]: event.payload}})
            node.broadcast("order.stored", {"id": event.payload["id"]})

        @dashboard.on("order.*")
        def count(event, node):
            node.state.set(lambda s, views: {"seen": s["seen"] + 1,
                                             "orders": views["orders"].get(lambda o: len(o["orders"]))})

        shop.broadcast("order.created", {"id": "o-1"})        # from a view, a script, the CLI
        orders.state.get("orders.o-1")                        # committed state, through a dotted path
    """

    # A node's state also changes by set() outside the worker, which is not in the event log.
    replayable = False

    style = "nodes"

    def __init__(self, name: str, *, on_failure: str = "skip", effects: str = "entity") -> None:
        super().__init__(name, on_failure=on_failure, effects=effects)
        self.nodes: dict[str, Node] = {}

    def node(self, name: str, *, initial: JSON = None) -> Node:
        """Define a node. Its state is ``initial`` (default ``{}``) until something sets it."""
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NODE_NAME:
            raise DefinitionError(f"a node name is a non-empty string of at most {MAX_NODE_NAME} characters",
                                  automation=self.name, part=repr(name))
        if name in self.nodes:
            raise DefinitionError(f"node {name!r} is defined twice", automation=self.name, part=name)
        try:
            start = ensure_json({} if initial is None else initial, f"the initial state of node {name!r}")
        except TypeError as exc:
            raise DefinitionError(str(exc), automation=self.name, part=name) from exc
        node = Node(self, name, start)
        self.nodes[name] = node
        return node

    def __getitem__(self, name: str) -> Node:
        node = self.nodes.get(name)
        if node is None:
            raise UnknownNode(f"node system {self.name!r} has no node {name!r} (it has {sorted(self.nodes)})",
                              field="node", system=self.name, node=name)
        return node

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes.values())

    def subscribers(self, event: NodeEvent) -> tuple[str, ...]:
        """The nodes with a handler for ``event``, in definition order."""
        return tuple(n.name for n in self.nodes.values() if n.handlers_for(event))

    def check_receiver(self, name: str, event: NodeEvent) -> Node:
        node = self[name]
        if not node.handlers_for(event):
            raise ValidationError(f"node {name!r} has no handler for {event.type!r}", field="type",
                                  system=self.name, node=name)
        return node

    # -- outside the worker (delegated to the caller half, garrison.automations.nodes.state) ----------

    def broadcast(self, type: str, payload: JSON = None, *, client: Runtime | None = None,
                  tenant: str | None = None, idempotency_key: str | None = None) -> Delivery:
        """Ingest ``type`` for every subscribed node in one transaction; a new correlation starts here.
        The same ``idempotency_key`` twice (per tenant) delivers once."""
        return deliver(self, None, type, payload, client, tenant, idempotency_key)

    def send(self, node: str, type: str, payload: JSON = None, *, client: Runtime | None = None,
             tenant: str | None = None, idempotency_key: str | None = None) -> Delivery:
        """Ingest ``type`` for one node (refused unless it has a handler for it)."""
        return deliver(self, node, type, payload, client, tenant, idempotency_key)

    # -- the engine's side ----------------------------------------------------------------------------

    def accepts(self, message: Message) -> bool:
        return message.target == self.name

    def route(self) -> Route:
        return Route(())  # only the events sent to the system's nodes

    def apply(self, state: JSON, message: Message, ctx: ApplyContext) -> Outcome:
        node = self[ctx.key]
        event = NodeEvent.from_message(message)
        handlers = node.handlers_for(event)
        current = node.initial_state() if state is None and ctx.version == 0 else state
        if not handlers:
            return Outcome(state=state, changed=False, label=event.type)
        nctx = NodeContext(self, node, event, ctx, clone_json(current), self._reader(ctx), message.event_id)
        for handler in handlers:
            returned = handler.fn(replace(event, payload=clone_json(event.payload)), nctx)
            check_returned(returned, handler.fn, node.name)
        new = nctx.state.value
        changed = not json_equal(new, current)
        return Outcome(state=new if changed else state, changed=changed, label=event.type, emits=nctx.emits)

    def _reader(self, ctx: ApplyContext) -> Reader:
        """Committed state of other nodes, read in the engine's transaction (``ctx.read``): the same
        database the message came from, and never this batch's writes, which are stored at its commit.
        Without ``ctx.read`` (a handler called by hand), through the process's client."""
        engine_read = ctx.read
        if engine_read is not None:
            return lambda names: engine_read(self.name, names)
        tenant = ctx.tenant

        def read(names: Sequence[str]) -> Mapping[str, tuple[JSON, int]]:
            return read_committed(default_client().db, tenant, self.name, names)

        return read
