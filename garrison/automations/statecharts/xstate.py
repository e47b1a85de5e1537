"""XState machine configurations (JSON), read into a statechart definition: ``Statechart.from_xstate``.

A migration from xstate keeps its machine: ``id``, ``initial``, ``context``, ``states`` (nested, ``type:
"parallel"`` / ``"final"``), ``on``, ``after`` (milliseconds, or a name from ``delays=``), ``entry`` /
``exit``, ``onDone``, guards (``guard``, v4's ``cond``) and actions by name, as strings or ``{"type":
name, "params": {...}}``; targets as xstate writes them (``"sibling"``, ``".child"``, ``"a.b"``,
``"#id"``, ``"#machine.a.b"``, a list for several regions). Guards and actions are Python functions
given by name: ``(context, event)``, plus ``params`` when the configuration gives some. The event is a
garrison message: its payload is ``event.data``.

Semantics are xstate v5's: a transition to its own state does not re-enter it unless it says
``"reenter": true`` (v4: ``"internal": false``). What garrison's statecharts cannot run is refused with a
:class:`~garrison.errors.DefinitionError` naming the state and the key: ``invoke`` and ``spawn`` (child
actors: do the work in an effect-performing automation and send the result back as an event), ``always``
(eventless transitions), ``history`` states, wildcard events, ``output``, delays given as functions,
xstate's built-in actions (``xstate.assign``...) and ``reenter`` on a transition to a descendant. Pure
metadata (``description``, ``meta``, ``tags``, ``types``...) is dropped.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from garrison.durations import parse_duration
from garrison.errors import DefinitionError, ValidationError

__all__ = ["from_xstate"]

_IGNORED = frozenset({"description", "meta", "tags", "types", "schema", "tsTypes", "predictableActionArguments",
                      "preserveActionOrder", "version", "strict"})
_REFUSED = {
    "invoke": "invoke (child actors, promises) is not supported: perform the work in an effect (a machine's "
              "listener, a loop's command) and send its result back as an event",
    "spawn": "spawned actors are not supported",
    "always": "always (eventless transitions) is not supported: send an event, or fold the condition into "
              "the guards of the transitions that lead here",
    "output": "output (final state output) is not supported",
    "history": "history is not supported",
    "activities": "activities are not supported: use entry and exit actions",
    "data": "data (v4 final state output) is not supported",
}
_STATE_KEYS = frozenset({"id", "key", "type", "initial", "states", "on", "after", "entry", "exit", "onEntry", "onExit",
                         "onDone", "context"})
_TRANSITION_KEYS = frozenset({"target", "guard", "cond", "actions", "reenter", "internal", "delay"})


def from_xstate(
    config: Mapping[str, Any],
    *,
    name: str | None,
    guards: Mapping[str, Callable[..., Any]],
    actions: Mapping[str, Callable[..., Any]],
    delays: Mapping[str, Any],
) -> dict[str, Any]:
    """The keyword arguments of :class:`~garrison.automations.statecharts.chart.Statechart` for an xstate
    machine configuration (``name`` defaults to the machine's ``id``)."""
    return _Reader(config, name, guards, actions, delays).read()


class _Reader:
    def __init__(
        self, config: Mapping[str, Any], name: str | None, guards: Mapping[str, Callable[..., Any]],
        actions: Mapping[str, Callable[..., Any]], delays: Mapping[str, Any],
    ) -> None:
        if not isinstance(config, Mapping):
            raise DefinitionError(f"an xstate configuration is a dict, not {type(config).__name__}",
                                  automation=name, part="config")
        self.config = config
        self.machine_id = config.get("id", config.get("key"))
        self.name = name or self.machine_id
        if not isinstance(self.name, str) or not self.name:
            raise DefinitionError("the xstate configuration has no id: give Statechart.from_xstate(..., name=...)",
                                  automation=name, part="id")
        self.guards, self.actions, self.delays = dict(guards), dict(actions), dict(delays)
        self.used_guards: dict[str, Callable[..., Any]] = {}
        self.used_actions: dict[str, Callable[..., Any]] = {}

    def error(self, path: str, key: str, message: str) -> DefinitionError:
        where = f"state {path!r}" if path else "the machine"
        return DefinitionError(f"xstate {where}: {key}: {message}", automation=self.name, state=path or "(root)",
                               part=key)

    def read(self) -> dict[str, Any]:
        root = self.config
        kind = root.get("type") or "compound"
        if kind not in ("compound", "parallel"):
            raise self.error("", "type", f"the machine itself cannot be {kind!r}")
        self._check_keys(root, "", allowed=_STATE_KEYS)
        if not isinstance(root.get("states"), Mapping) or not root["states"]:
            raise self.error("", "states", "the machine needs states")
        out: dict[str, Any] = {
            "name": self.name,
            "initial": root.get("initial"),
            "states": {k: self._state(v, k) for k, v in root["states"].items()},
            "on": self._on(root.get("on"), "", set()),
            "id": self.machine_id if isinstance(self.machine_id, str) else None,
            "type": kind,
        }
        if root.get("context") is not None:
            if not isinstance(root["context"], Mapping):
                raise self.error("", "context", "the context of a JSON configuration is a dict")
            out["context"] = dict(root["context"])
        out["guards"], out["actions"] = self.used_guards, self.used_actions
        return out

    def _check_keys(self, raw: Mapping[str, Any], path: str, *, allowed: frozenset[str]) -> None:
        for key in raw:
            if key in _REFUSED:
                raise self.error(path, key, _REFUSED[key])
            if key not in allowed and key not in _IGNORED:
                raise self.error(path, key, f"unknown key (a state takes {sorted(allowed)})")

    def _state(self, raw: Any, path: str) -> dict[str, Any]:
        if not isinstance(raw, Mapping):
            raise self.error(path, "state", f"a state is a dict, not {type(raw).__name__}")
        self._check_keys(raw, path, allowed=_STATE_KEYS - {"context"})
        if raw.get("type") == "history":
            raise self.error(path, "type", _REFUSED["history"])
        out: dict[str, Any] = {}
        for key in ("type", "initial", "id"):
            if raw.get(key) is not None:
                out[key] = raw[key]
        if raw.get("states"):
            out["states"] = {k: self._state(v, f"{path}.{k}") for k, v in raw["states"].items()}
        own_ids = {f"#{self.machine_id}.{path}"} | ({f"#{raw['id']}"} if isinstance(raw.get("id"), str) else set())
        if raw.get("on"):
            out["on"] = self._on(raw["on"], path, own_ids)
        if raw.get("after"):
            out["after"] = self._after(raw["after"], path, own_ids)
        if raw.get("onDone") is not None:
            out["on_done"] = self._transitions(raw["onDone"], path, "onDone", own_ids)
        for key, alias in (("entry", "onEntry"), ("exit", "onExit")):
            given = raw.get(key, raw.get(alias))
            if given is not None:
                out[key] = self._actions(given, path, key)
        return out

    def _on(self, raw: Any, path: str, own_ids: set[str]) -> dict[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, Mapping):
            raise self.error(path, "on", "on is a dict of event type -> transition")
        out = {}
        for event, spec in raw.items():
            if not isinstance(event, str) or not event or "*" in event or event.startswith(("xstate.", "done.")):
                raise self.error(path, f"on {event!r}", "wildcard, empty and xstate-internal event types are not "
                                 "supported: name each event")
            out[event] = self._transitions(spec, path, f"on {event!r}", own_ids)
        return out

    def _after(self, raw: Any, path: str, own_ids: set[str]) -> dict[Any, Any]:
        if isinstance(raw, list):  # v4: [{"delay": 1000, "target": ...}, ...]
            grouped: dict[Any, list[Any]] = {}
            for item in raw:
                if not isinstance(item, Mapping) or "delay" not in item:
                    raise self.error(path, "after", "a list of delayed transitions needs a delay on each")
                grouped.setdefault(item["delay"], []).append({k: v for k, v in item.items() if k != "delay"})
            raw = grouped
        if not isinstance(raw, Mapping):
            raise self.error(path, "after", "after is a dict of delay -> transition")
        return {self._delay(delay, path): self._transitions(spec, path, f"after {delay!r}", own_ids)
                for delay, spec in raw.items()}

    def _delay(self, delay: Any, path: str) -> timedelta:
        given = self.delays.get(delay, delay) if isinstance(delay, str) else delay
        if isinstance(given, str) and given.strip().isdigit():
            given = int(given)
        if isinstance(given, int | float) and not isinstance(given, bool):
            return timedelta(milliseconds=given)  # xstate delays are milliseconds
        if isinstance(given, timedelta):
            return given
        if callable(given):
            raise self.error(path, f"after {delay!r}", "a delay computed by a function is not supported: give "
                             "a fixed one in delays=")
        if isinstance(given, str) and given not in self.delays:
            try:
                return parse_duration(given, field="after")
            except ValidationError:
                raise self.error(path, f"after {delay!r}", f"unknown delay {given!r}: give it in delays= "
                                 "(milliseconds, or a duration such as '5m')") from None
        raise self.error(path, f"after {delay!r}", f"a delay is milliseconds or a name, not {delay!r}")

    def _transitions(self, spec: Any, path: str, label: str, own_ids: set[str]) -> list[dict[str, Any]]:
        items = spec if isinstance(spec, list) else [spec]
        out = []
        for item in items:
            if item is None or isinstance(item, str):
                item = {"target": item}
            if not isinstance(item, Mapping):
                raise self.error(path, label, f"a transition is a target or a dict, not {item!r}")
            unknown = set(item) - _TRANSITION_KEYS - _IGNORED
            if unknown:
                raise self.error(path, label, f"unknown keys {sorted(unknown)} in a transition")
            out.append(self._transition(item, path, label, own_ids))
        return out

    def _transition(self, item: Mapping[str, Any], path: str, label: str, own_ids: set[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        targets = item.get("target")
        names = [] if targets is None else [targets] if isinstance(targets, str) else list(targets)
        reenter = bool(item.get("reenter")) or item.get("internal") is False
        resolved = []
        for target in names:
            if not isinstance(target, str) or not target:
                raise self.error(path, label, f"a target is a state, not {target!r}")
            if target.startswith("#") and target[1:] == self.machine_id:
                raise self.error(path, label, "a transition to the machine itself is not supported")
            own = path.rsplit(".", 1)[-1] if path else None
            if len(names) == 1 and own is not None and (target == own or target in own_ids):
                if not reenter:
                    continue  # v5: a transition to its own state stays in it (no exit, no entry)
            elif reenter and (target.startswith(".") or target.startswith(f"{own}.")):
                raise self.error(path, label, "reenter on a transition to a descendant is not supported")
            resolved.append(target)
        if resolved:
            out["target"] = resolved[0] if len(resolved) == 1 else resolved
        guard = item.get("guard", item.get("cond"))
        if guard is not None:
            out["guard"] = self._named(guard, path, label, "guard")
        if item.get("actions") is not None:
            out["actions"] = self._actions(item["actions"], path, label)
        return out

    def _actions(self, spec: Any, path: str, label: str) -> list[str]:
        items = spec if isinstance(spec, list) else [spec]
        return [self._named(item, path, label, "action") for item in items]

    def _named(self, spec: Any, path: str, label: str, what: str) -> str:
        """The name of a guard or action (``"name"`` or ``{"type": name, "params": {...}}``), registered
        for the chart; with params, a function of ``(context, event)`` that passes them on."""
        table, used = (self.guards, self.used_guards) if what == "guard" else (self.actions, self.used_actions)
        params: Any = None
        if isinstance(spec, Mapping):
            extra = set(spec) - {"type", "params"}
            if extra:
                raise self.error(path, label, f"a {what} is a name or {{type, params}}, not with {sorted(extra)}")
            spec, params = spec.get("type"), spec.get("params")
        if not isinstance(spec, str) or not spec:
            raise self.error(path, label, f"a {what} of a JSON configuration is referred to by name, not {spec!r}")
        if spec.startswith("xstate."):
            raise self.error(path, label, f"xstate's built-in {what} {spec!r} is not supported: write it as a "
                             f"named {what} (an action may return the new context, as assign does)")
        fn = table.get(spec)
        if fn is None:
            raise self.error(path, label, f"unknown {what} {spec!r}: give it in {what}s= (known: {sorted(table)})")
        if params is None:
            used[spec] = fn
            return spec
        if not _takes_params(fn):
            raise self.error(path, label, f"{what} {spec!r} is given params but takes no third argument "
                             "(context, event, params)")
        label_name = f"{spec}({_describe(params)})"
        used[label_name] = _bind(fn, params, label_name)
        return label_name


def _takes_params(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    return len(positional) >= 3 or any(p.kind is p.VAR_POSITIONAL for p in positional)


def _bind(fn: Callable[..., Any], params: Any, name: str) -> Callable[..., Any]:
    def bound(context: Any, event: Any) -> Any:
        return fn(context, event, params)

    bound.__name__ = name
    return bound


def _describe(params: Any) -> str:
    return json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
