"""Journeys, after the events seed: a durable workflow function per key (a user).

::

    @journey("onboarding", on="app/email.submitted")
    def onboarding(event, ctx):
        email = event.data["email"]
        account = ctx.wait_for("app/account.created", match={"email": email}, timeout="1s")
        ...
        return {"posts": 2}

A trigger event starts a *run* for its key. The function is executed until it must wait (``wait_for``,
``sleep``, ``step``); the run is then suspended and its progress (its *history*: one entry per call that
completed) is committed with the entity. When the run wakes (a matching event, its timer, a step's
result) the function is executed again from the top, every call before the frontier answered from the
history, so it must be deterministic: a call that differs from the history at the same position fails
the run with :class:`~garrison.errors.DeterminismError` naming both. ``ctx.now()`` is the deterministic
clock; ``ctx.log()`` writes a line once, not on every re-execution.

The calls a function makes, their history and the look-back rule of ``wait_for`` are in
:mod:`garrison.automations.journeys.context`.

Concurrency per key when a trigger arrives while a run is active: ``"skip"`` (the default, the seed's
behaviour: the event is still seen by the active run's waits), ``"queue"`` (start it when the active run
ends) or ``"parallel"`` (start another run). A ``cancel_on`` event cancels the active runs. A failed run
(the function raised, a step failed for good, determinism) is not active; ``garrison retry run/ID``
re-executes it from its history.
"""

from __future__ import annotations

import inspect
import logging
import traceback
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from garrison.automations.journeys.context import (
    LOG_LINES,
    JourneyContext,
    _name_matches,
    _Out,
    _StepCall,
    _Suspend,
    describe,
    event_json,
    event_message,
    matches,
)
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
from garrison.core.jsondata import JSON, clone_json, ensure_json
from garrison.core.namespace import reserved
from garrison.core.timers import TIMER_EVENT
from garrison.errors import DefinitionError, DeterminismError

__all__ = [
    "ACTIVE",
    "CONCURRENCY",
    "CONTROL",
    "ENDED",
    "LOG_LINES",
    "RUN_CANCEL",
    "RUN_RETRY",
    "STEP_DONE",
    "STEP_FAILED",
    "Journey",
    "JourneyContext",
    "JourneyFn",
    "describe",
    "event_json",
    "event_message",
    "journey",
    "matches",
]

log = logging.getLogger("garrison.journey")

STEP_DONE = "garrison/step.completed"
STEP_FAILED = "garrison/step.failed"
RUN_RETRY = "garrison/run.retry"
RUN_CANCEL = "garrison/run.cancel"
CONTROL = frozenset({TIMER_EVENT, STEP_DONE, STEP_FAILED, RUN_RETRY, RUN_CANCEL})
CONCURRENCY = ("skip", "queue", "parallel")
ACTIVE = frozenset({"running", "waiting", "sleeping", "stepping"})
ENDED = frozenset({"completed", "cancelled"})

JourneyFn = Callable[[Message, "JourneyContext"], Any]


class Journey(Automation):
    """A journey: ``fn(event, ctx)`` run per key when an ``on`` event arrives. See the module's doc."""

    style = "journey"

    def __init__(
        self,
        name: str,
        fn: JourneyFn,
        *,
        on: str | Iterable[str],
        cancel_on: str | Iterable[str] = (),
        concurrency: str = "skip",
        events: str | Iterable[str] | None = None,
    ) -> None:
        # A run's steps already run one after another; steps of different runs need not wait for each other.
        super().__init__(name, effects="parallel")
        if not callable(fn):
            raise DefinitionError("a journey needs a callable", automation=name, part="fn")
        self.fn = fn
        self.on = _patterns(on, name, "on")
        if not self.on:
            raise DefinitionError("a journey needs at least one trigger event in on=", automation=name, part="on")
        self.cancel_on = _patterns(cancel_on, name, "cancel_on")
        if concurrency not in CONCURRENCY:
            raise DefinitionError(
                f"concurrency must be one of {', '.join(CONCURRENCY)}, not {concurrency!r}",
                automation=name, part="concurrency",
            )
        self.concurrency = concurrency
        self.events = None if events is None else _patterns(events, name, "events") + self.on + self.cancel_on
        self.__doc__ = fn.__doc__

    def __call__(self, event: Message, ctx: JourneyContext) -> Any:
        return self.fn(event, ctx)

    # -- routing --------------------------------------------------------------------------------

    def accepts(self, message: Message) -> bool:
        if message.target is not None:
            return message.target == self.name
        if self.events is None:
            return True
        return any(_name_matches(message.name, p) for p in self.events)

    def route(self) -> Route:
        return Route(None if self.events is None else tuple(self.events))

    # -- the handler ----------------------------------------------------------------------------

    def apply(self, state: JSON, message: Message, ctx: ApplyContext) -> Outcome:
        st: dict[str, Any] = clone_json(state) if isinstance(state, dict) else {"next": 1, "runs": {}, "queue": []}
        out = _Out()
        if message.target == self.name and message.name in CONTROL:
            self._control(st, message, ctx, out)
        else:
            self._event(st, message, ctx, out)
        while st.get("queue") and not any(r["status"] in ACTIVE for r in st["runs"].values()):
            self._start(st, event_message(ctx.tenant, ctx.key, st["queue"].pop(0)), message, ctx, out)
        if not out.changed:
            return Outcome(state=state, changed=False, label=message.name)
        records = [self._record_of(run, message) for run in out.touched.values()]
        return Outcome(
            state=st, changed=True, label=message.name, effects=out.effects, timers=out.timers,
            cancel_timers=out.cancels, emits=out.emits, runs=records,
        )

    def _event(self, st: dict[str, Any], message: Message, ctx: ApplyContext, out: _Out) -> None:
        runs: dict[str, dict[str, Any]] = st["runs"]
        if any(_name_matches(message.name, p) for p in self.cancel_on):
            for run in sorted(runs.values(), key=lambda r: r["n"]):
                self._cancel(st, run, message, out, f"cancelled by {message.name}")
            if st.get("queue"):
                st["queue"] = []
                out.changed = True
        for run in sorted(runs.values(), key=lambda r: r["n"]):
            pending = run.get("pending")
            if run["status"] != "waiting" or not pending or pending["kind"] != "wait":
                continue
            if message.seq <= int(run["trigger"]["seq"]) or not _name_matches(message.name, pending["name"]):
                continue
            if not matches(message.data, pending["match"]):
                continue
            self._drop_timer(run, out)
            run.setdefault("marks", {})[pending["mkey"]] = message.seq
            run["history"].append({
                "kind": "wait", "name": pending["name"], "label": pending["match"], "match": pending["match"],
                "result": [event_json(message)],
            })
            self._resume(st, run, message, ctx, out)
        if message.system or not any(_name_matches(message.name, p) for p in self.on):
            return
        active = [r for r in runs.values() if r["status"] in ACTIVE]
        if not active or self.concurrency == "parallel":
            self._start(st, message, message, ctx, out)
        elif self.concurrency == "queue":
            st.setdefault("queue", []).append(event_json(message))
            out.changed = True

    def _control(self, st: dict[str, Any], message: Message, ctx: ApplyContext, out: _Out) -> None:
        data = message.data
        run = st["runs"].get(str(data.get("run")))
        if run is None:
            return
        pending = run.get("pending") or {}
        if message.name == TIMER_EVENT:
            if run["status"] not in ("waiting", "sleeping") or pending.get("timer") != data.get("timer"):
                return  # a stale timer: its wait was answered, or the run moved on
            if pending["kind"] == "wait":
                run["history"].append({"kind": "wait", "name": pending["name"], "label": pending["match"],
                                       "match": pending["match"], "result": None})
            else:
                run["history"].append({"kind": "sleep", "until": pending["until"]})
            self._resume(st, run, message, ctx, out)
        elif message.name == STEP_DONE:
            if run["status"] != "stepping" or pending.get("op") != data.get("op"):
                return
            run["history"].append({"kind": "step", "name": pending["name"], "result": data.get("result")})
            self._resume(st, run, message, ctx, out)
        elif message.name == STEP_FAILED:
            if run["status"] != "stepping" or pending.get("op") != data.get("op"):
                return
            error = {"type": "StepFailed", "message": f"step {pending['name']!r} failed: {data.get('error')}",
                     "traceback": data.get("traceback", "")}
            self._fail(st, run, message, out, error)
        elif message.name == RUN_RETRY:
            if run["status"] != "failed":
                return
            run["error"] = None
            self._resume(st, run, message, ctx, out)
        elif message.name == RUN_CANCEL:
            self._cancel(st, run, message, out, str(data.get("reason") or "cancelled by an operator"))

    # -- run lifecycle --------------------------------------------------------------------------

    def _start(self, st: dict[str, Any], trigger: Message, message: Message, ctx: ApplyContext, out: _Out) -> None:
        number = int(st.get("next", 1))
        st["next"] = number + 1
        run = {
            "n": number, "status": "running", "trigger": event_json(trigger),
            "started_at": message.created_at.isoformat(), "history": [], "marks": {}, "pending": None,
            "log": [], "error": None,
        }
        st["runs"][str(number)] = run
        self._resume(st, run, message, ctx, out)

    def _resume(self, st: dict[str, Any], run: dict[str, Any], message: Message, ctx: ApplyContext, out: _Out) -> None:
        run["status"] = "running"
        run["pending"] = None
        out.touch(run)
        trigger = event_message(ctx.tenant, ctx.key, run["trigger"])
        jc = JourneyContext(self.name, run, message, ctx, out, tenant=ctx.tenant, key=ctx.key)
        try:
            value = self.fn(trigger, jc)
            if jc.replaying:
                left = run["history"][jc._i]
                raise DeterminismError(
                    f"journey {self.name!r} run {run['n']} for key {ctx.key!r} changed under a live run: it "
                    f"returned before call {jc._i + 1}, {describe(left)}, which its history recorded",
                    journey=self.name, key=ctx.key, run=run["n"], step=jc._i + 1, recorded=describe(left),
                )
            value = ensure_json(value, f"the result of journey {self.name!r}")
        except _Suspend as suspend:
            run["status"] = suspend.status
            run["pending"] = suspend.pending
            return
        except Exception as exc:  # noqa: BLE001 - the run fails, the worker and the key go on
            error = {"type": type(exc).__name__, "message": str(exc) or repr(exc), "traceback": traceback.format_exc()}
            self._fail(st, run, message, out, error)
            return
        run["status"] = "completed"
        run["result"] = value
        run["ended_at"] = message.created_at.isoformat()
        st["runs"].pop(str(run["n"]), None)

    def _fail(
        self, st: dict[str, Any], run: dict[str, Any], message: Message, out: _Out, error: dict[str, Any]
    ) -> None:
        self._drop_timer(run, out)
        run["status"] = "failed"
        run["pending"] = None
        run["error"] = error
        out.touch(run)
        log.warning("journey run failed", extra={"journey": self.name, "key": message.key, "run": run["n"],
                                                  "error": error["message"]})

    def _cancel(self, st: dict[str, Any], run: dict[str, Any], message: Message, out: _Out, reason: str) -> None:
        if run["status"] in ENDED:
            return
        self._drop_timer(run, out)
        run["status"] = "cancelled"
        run["pending"] = None
        run["error"] = {"type": "Cancelled", "message": reason, "traceback": ""}
        run["ended_at"] = message.created_at.isoformat()
        out.touch(run)
        st["runs"].pop(str(run["n"]), None)

    def _drop_timer(self, run: dict[str, Any], out: _Out) -> None:
        pending = run.get("pending") or {}
        if pending.get("timer"):
            out.cancels.append(pending["timer"])

    def _record_of(self, run: dict[str, Any], message: Message) -> dict[str, Any]:
        return {
            "number": run["n"], "status": run["status"], "trigger": run["trigger"], "waiting": run.get("pending"),
            "history": run["history"], "log": run.get("log", []), "result": run.get("result"),
            "error": run.get("error"), "started_at": datetime.fromisoformat(run["started_at"]),
            "ended_at": datetime.fromisoformat(run["ended_at"]) if run.get("ended_at") else None,
        }

    # -- steps, after commit --------------------------------------------------------------------

    def perform(self, effect: EffectSpec, ctx: EffectContext) -> None:
        if effect.kind != "step":
            super().perform(effect, ctx)
        number, op = int(effect.payload["run"]), int(effect.payload["op"])
        state = ctx.client.state(self.name, ctx.key, tenant=ctx.tenant)
        run = (state or {}).get("runs", {}).get(str(number))
        if run is None or run["status"] != "stepping" or (run.get("pending") or {}).get("op") != op:
            return  # done already (a duplicated message) or the run moved on (cancelled)
        trigger = event_message(ctx.tenant, ctx.key, run["trigger"])
        jc = JourneyContext(self.name, clone_json(run), None, None, None, tenant=ctx.tenant, key=ctx.key, perform_op=op)
        try:
            self.fn(trigger, jc)
        except _StepCall as call:
            fn, args, kwargs = call.fn, call.args, call.kwargs
        else:
            raise DeterminismError(
                f"journey {self.name!r} run {number} for key {ctx.key!r} no longer reaches step {op + 1}",
                journey=self.name, key=ctx.key, run=number, step=op + 1,
            )
        step_key = f"{self.name}:{ctx.key}:{number}:{op}"
        if _accepts_keyword(fn, "idempotency_key"):
            kwargs = {**kwargs, "idempotency_key": step_key}
        try:
            result = ensure_json(fn(*args, **kwargs), f"the result of step {effect.payload['step']!r}")
        except Exception as exc:
            if ctx.final_attempt:
                _report(ctx.client, self.name, ctx, STEP_FAILED, {
                    "run": number, "op": op, "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc(),
                })
            raise
        _report(ctx.client, self.name, ctx, STEP_DONE, {"run": number, "op": op, "result": result})


def _report(client: EffectClient, automation: str, ctx: EffectContext, name: str, data: dict[str, Any]) -> None:
    client.ingest(name, ctx.key, data, tenant=ctx.tenant, target=automation, system=True,
                  idempotency_key=reserved("step", ctx.idempotency_key, name.rsplit('.', 1)[-1]))


def _accepts_keyword(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _patterns(value: str | Iterable[str] | None, automation: str, part: str) -> tuple[str, ...]:
    if value is None:
        return ()
    items = (value,) if isinstance(value, str) else tuple(value)
    for item in items:
        if not isinstance(item, str) or not item:
            raise DefinitionError(f"{part} takes event names or globs, not {item!r}", automation=automation, part=part)
    return items


def journey(
    name: str | None = None,
    *,
    on: str | Iterable[str],
    cancel_on: str | Iterable[str] = (),
    concurrency: str = "skip",
    events: str | Iterable[str] | None = None,
) -> Callable[[JourneyFn], Journey]:
    """Decorator: ``@journey("onboarding", on="app/email.submitted")`` turns a function into a journey."""

    def wrap(fn: JourneyFn) -> Journey:
        return Journey(name or fn.__name__, fn, on=on, cancel_on=cancel_on, concurrency=concurrency, events=events)

    return wrap
