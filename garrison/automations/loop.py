"""Update loops, after go-state: ``init`` / ``update`` / optional ``view``, commands as side effects.

``init() -> (model, commands)`` runs only when an entity has no snapshot yet (go-state's Aggregate
mode: a loaded snapshot skips init's commands): on the entity's first message, or when
:meth:`UpdateLoop.start` starts it without one (go-state's ``Run``, which executes ``Init`` and its
commands at once). ``update(model, message) -> (model, commands)`` runs
for each message in order. A command is data (``loop.cmd("fetch", 42)``) naming a function registered
with ``@loop.command``; it runs after commit, and the messages it returns are ingested back for the
same key, in order. ``None`` messages and commands are ignored. The snapshot is written only when
``update`` succeeds; a replay re-applies the log with every command skipped.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from garrison.core.contract import (
    ApplyContext,
    Automation,
    EffectClient,
    EffectContext,
    EffectSpec,
    Message,
    Outcome,
    Route,
)
from garrison.core.ingest import IngestedEvent
from garrison.core.jsondata import JSON, clone_json, ensure_json, json_equal
from garrison.core.namespace import Reserved, reserved
from garrison.core.runtime import default_client
from garrison.errors import DefinitionError

START = "garrison/loop.start"


@dataclass(frozen=True, slots=True)
class Command:
    """A side effect as data: the name of a registered command function and its JSON arguments."""

    name: str
    args: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class Msg:
    """A message a command feeds back into the loop."""

    name: str
    data: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class CommandContext:
    tenant: str
    key: str
    idempotency_key: str
    client: EffectClient


Init = Callable[[], tuple[JSON, Any]]
Update = Callable[[JSON, Message], tuple[JSON, Any]]
View = Callable[[JSON], Any]
CommandFn = Callable[..., Any]


class UpdateLoop(Automation):
    """An Elm-style update loop.

    ::

        def init():
            return {"seen": 0}, None

        def update(model, msg):
            model["seen"] += 1
            return model, [loop.cmd("notify", msg.data["user"])]

        loop = UpdateLoop("visits", init=init, update=update, on=["app/page.*"])

        @loop.command
        def notify(ctx, user):
            return Msg("notified", {"user": user})
    """

    style = "loop"

    def __init__(
        self,
        name: str,
        *,
        init: Init,
        update: Update,
        view: View | None = None,
        on: Iterable[str] = (),
        on_failure: str = "skip",
        effects: str = "entity",
    ) -> None:
        super().__init__(name, on_failure=on_failure, effects=effects)
        if not callable(init) or not callable(update):
            raise DefinitionError("an update loop needs callable init and update", automation=name)
        if view is not None and not callable(view):
            raise DefinitionError("view must be callable", automation=name, part="view")
        self.init = init
        self.update = update
        self.view_fn = view
        self.on = tuple(on)
        self.commands: dict[str, CommandFn] = {}

    def command(self, fn: CommandFn | None = None, *, name: str | None = None) -> Any:
        """Register a command function ``fn(ctx: CommandContext, *args) -> Msg | list[Msg] | None``."""

        def register(f: CommandFn) -> CommandFn:
            label = name or f.__name__
            if label in self.commands:
                raise DefinitionError(f"command {label!r} is defined twice", automation=self.name, part=label)
            self.commands[label] = f
            return f

        return register(fn) if fn is not None else register

    def cmd(self, name: str, *args: Any) -> Command:
        if name not in self.commands:
            raise DefinitionError(f"no command {name!r}", automation=self.name, part=name)
        return Command(name, args)

    def start(self, key: str, *, client: EffectClient | None = None, tenant: str | None = None) -> IngestedEvent:
        """Start the loop at ``key`` without waiting for a message: create the entity, run ``init`` and
        perform its commands (go-state's ``Run``). Idempotent: a second call (or a start after the entity
        got its first message) changes nothing; the result is then the first start event, ``duplicate``.

        The start is a ``garrison/loop.start`` event targeted at this loop, applied in order with the
        key's other messages by whatever worker runs the loop (or ``client.run_pending()``), so every
        guarantee of a message holds: exactly once, under the key's lock, its commands with idempotency
        keys. ``update`` never sees it."""
        return (client or default_client()).ingest(
            START, key, {}, tenant=tenant, idempotency_key=self._start_key(key), target=self.name, system=True,
        )

    def _start_key(self, key: str) -> Reserved:
        """The start's idempotency key, in garrison's own namespace (one per loop and key)."""
        return reserved("loop.start", self.name, key)

    def view(self, model: JSON) -> Any:
        return model if self.view_fn is None else self.view_fn(clone_json(model))

    def accepts(self, message: Message) -> bool:
        if message.target is not None:
            return message.target == self.name
        return any(fnmatch.fnmatchcase(message.name, pattern) for pattern in self.on)

    def route(self) -> Route:
        return Route(tuple(self.on))

    def apply(self, state: JSON, message: Message, ctx: ApplyContext) -> Outcome:
        commands: list[Command] = []
        fresh = ctx.version == 0 and state is None
        if message.name == START and message.target == self.name:
            if not fresh:  # started already (by an earlier start, or lazily by its first message)
                return Outcome(state=state, changed=False, label=message.name)
            model, cmds = self.init()
            commands += _commands(cmds, self.name)
            model = ensure_json(model, f"the model returned by {self.name}.init")
        else:
            if fresh:
                model, cmds = self.init()
                commands += _commands(cmds, self.name)
            else:
                model = clone_json(state)
            model, cmds = self.update(model, message)
            commands += _commands(cmds, self.name)
            model = ensure_json(model, f"the model returned by {self.name}.update")
        effects = [
            EffectSpec("command", {"command": c.name, "args": ensure_json(list(c.args), f"command {c.name} args")})
            for c in commands
        ]
        changed = ctx.version == 0 or not json_equal(model, state)
        return Outcome(state=model, changed=changed, label=message.name, effects=effects)

    def perform(self, effect: EffectSpec, ctx: EffectContext) -> None:
        if effect.kind != "command":
            super().perform(effect, ctx)
        name = effect.payload["command"]
        fn = self.commands.get(name)
        if fn is None:
            raise LookupError(f"update loop {self.name!r} has no command {name!r}")
        result = fn(CommandContext(ctx.tenant, ctx.key, ctx.idempotency_key, ctx.client), *effect.payload["args"])
        items = [] if result is None else (list(result) if isinstance(result, list | tuple) else [result])
        events = []
        for i, item in enumerate(m for m in items if m is not None):
            msg = item if isinstance(item, Msg) else Msg(item["name"], item.get("data"))
            events.append({
                "name": msg.name, "key": ctx.key, "data": dict(msg.data or {}), "tenant": ctx.tenant,
                "target": self.name, "idempotency_key": reserved("command", ctx.idempotency_key, "msg", i),
            })
        if events:
            ctx.client.ingest_many(events)


def _commands(cmds: Any, name: str) -> list[Command]:
    if cmds is None:
        return []
    items = [cmds] if isinstance(cmds, Command) else list(cmds)
    for c in items:
        if c is not None and not isinstance(c, Command):
            raise TypeError(f"{name}: a command must be made with loop.cmd(...), not {type(c).__name__}")
    return [c for c in items if c is not None]
