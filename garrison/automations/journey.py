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

Look-back rule for ``wait_for(name, match=...)``: it sees every matching event ingested for the key
after the run's trigger, including those that arrived before the wait was reached, except events an
earlier ``wait_for`` of the same run with the same name and match already returned. When some exist it
returns them all (oldest first) at once; otherwise it suspends until the next one (returned as a list
of one) or the timeout (``None``). ``ctx.events(name, match=...)`` reads every matching event since the
trigger without consuming anything: the seed's "count earlier reminders".

Concurrency per key when a trigger arrives while a run is active: ``"skip"`` (the default, the seed's
behaviour: the event is still seen by the active run's waits), ``"queue"`` (start it when the active run
ends) or ``"parallel"`` (start another run). A ``cancel_on`` event cancels the active runs. A failed run
(the function raised, a step failed for good, determinism) is not active; ``garrison retry run/ID``
re-executes it from its history.
"""

from __future__ import annotations

import fnmatch
import hashlib
import inspect
import logging
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from garrison.automations.base import (
    JSON,
    ApplyContext,
    Automation,
    EffectContext,
    EffectSpec,
    EmitSpec,
    Message,
    Outcome,
    TimerSpec,
    canonical,
    clone_json,
    ensure_json,
    json_equal,
)
from garrison.automations.timers import TIMER_EVENT
from garrison.clock import as_utc
from garrison.durations import Duration, format_duration, parse_duration
from garrison.errors import DefinitionError, DeterminismError, GarrisonError, ValidationError

if TYPE_CHECKING:
    from garrison.client import Garrison

log = logging.getLogger("garrison.journey")

STEP_DONE = "garrison/step.completed"
STEP_FAILED = "garrison/step.failed"
RUN_RETRY = "garrison/run.retry"
RUN_CANCEL = "garrison/run.cancel"
CONTROL = frozenset({TIMER_EVENT, STEP_DONE, STEP_FAILED, RUN_RETRY, RUN_CANCEL})
CONCURRENCY = ("skip", "queue", "parallel")
ACTIVE = frozenset({"running", "waiting", "sleeping", "stepping"})
ENDED = frozenset({"completed", "cancelled"})
LOG_LINES = 200

JourneyFn = Callable[[Message, "JourneyContext"], Any]


# -- suspension signals: BaseException, so a user's ``except Exception`` cannot swallow them -----------


class _Suspend(BaseException):
    def __init__(self, status: str, pending: dict[str, Any]) -> None:
        super().__init__(status)
        self.status = status
        self.pending = pending


class _StepCall(BaseException):
    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        super().__init__("step")
        self.fn, self.args, self.kwargs = fn, args, kwargs


@dataclass(slots=True)
class _Out:
    """Everything one message made a journey do, turned into an :class:`Outcome` at the end."""

    effects: list[EffectSpec] = field(default_factory=list)
    timers: list[TimerSpec] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)
    emits: list[EmitSpec] = field(default_factory=list)
    touched: dict[int, dict[str, Any]] = field(default_factory=dict)
    changed: bool = False

    def touch(self, run: dict[str, Any]) -> None:
        self.touched[run["n"]] = run
        self.changed = True


def event_json(message: Message) -> dict[str, Any]:
    return {
        "id": message.event_id, "seq": message.seq, "name": message.name, "data": message.data,
        "at": message.created_at.isoformat(), "target": message.target, "system": message.system,
        "idempotency_key": message.idempotency_key,
    }


def event_message(tenant: str, key: str, item: Mapping[str, Any]) -> Message:
    return Message(
        tenant=tenant, key=key, seq=item["seq"], event_id=item["id"], name=item["name"], data=item["data"],
        target=item.get("target"), created_at=as_utc(datetime.fromisoformat(item["at"])),
        system=bool(item.get("system")), idempotency_key=item.get("idempotency_key"),
    )


_MISSING = object()


def matches(data: Any, match: Mapping[str, Any] | None) -> bool:
    """Subset match: every key of ``match`` is in ``data`` with a strictly equal value (``1`` is not
    ``True`` nor ``1.0``). A nested mapping is matched as a subset too; a dotted key (``"user.id"``) that is
    not itself a key of ``data`` is a path into it."""
    if not match:
        return True
    if not isinstance(data, Mapping):
        return False
    for name, expected in match.items():
        actual = data.get(name, _MISSING)
        if actual is _MISSING and "." in name:
            actual = data
            for part in name.split("."):
                actual = actual.get(part, _MISSING) if isinstance(actual, Mapping) else _MISSING
                if actual is _MISSING:
                    break
        if actual is _MISSING:
            return False
        if isinstance(expected, Mapping) and isinstance(actual, Mapping):
            if not matches(actual, expected):
                return False
        elif not json_equal(actual, expected):
            return False
    return True


def _name_matches(name: str, pattern: str) -> bool:
    return name == pattern or fnmatch.fnmatchcase(name, pattern)


def describe(op: Mapping[str, Any]) -> str:
    kind = op["kind"]
    if kind == "wait":
        extra = f", match={op['match']!r}" if op.get("match") else ""
        return f"wait_for({op['name']!r}{extra})"
    if kind in ("step", "emit", "events"):
        verb = {"step": "step", "emit": "ingest", "events": "events"}[kind]
        return f"{verb}({op['name']!r})"
    return f"{kind}()"


class JourneyContext:
    """What a journey function calls. Every call is recorded in the run's history (or answered from it)."""

    def __init__(
        self,
        journey: Journey,
        run: dict[str, Any],
        message: Message | None,
        actx: ApplyContext | None,
        out: _Out | None,
        *,
        tenant: str,
        key: str,
        perform_op: int | None = None,
    ) -> None:
        self._journey = journey
        self._run = run
        self._message = message
        self._actx = actx
        self._out = out
        self._i = 0
        self._perform_op = perform_op
        self.tenant = tenant
        self.key = key
        self.run = int(run["n"])

    # -- history --------------------------------------------------------------------------------

    @property
    def replaying(self) -> bool:
        """True while the function re-executes calls its history already answers."""
        return self._i < len(self._run["history"])

    def _recorded(self, kind: str, name: str | None = None, label: Any = None) -> dict[str, Any] | None:
        history = self._run["history"]
        if self._i < len(history):
            op = history[self._i]
            if op["kind"] != kind or op.get("name") != name or (
                label is not None and not json_equal(op.get("label"), label)
            ):
                now_calls = describe({"kind": kind, "name": name, "match": label if kind == "wait" else None})
                raise DeterminismError(
                    f"journey {self._journey.name!r} run {self.run} for key {self.key!r} changed under a live "
                    f"run: call {self._i + 1} was {describe(op)} when the run made it, but the code now calls "
                    f"{now_calls}",
                    journey=self._journey.name, key=self.key, run=self.run, step=self._i + 1,
                    recorded=describe(op), called=now_calls,
                )
            self._i += 1
            return dict(op)
        if self._perform_op is not None and not (kind == "step" and self._i == self._perform_op):
            raise DeterminismError(
                f"journey {self._journey.name!r} run {self.run} for key {self.key!r}: re-executing to perform "
                f"step {self._perform_op + 1} reached {describe({'kind': kind, 'name': name})} instead",
                journey=self._journey.name, key=self.key, run=self.run, step=self._i + 1,
            )
        return None

    def _record(self, op: dict[str, Any]) -> None:
        self._run["history"].append(op)
        self._i += 1

    def _now_dt(self) -> datetime:
        assert self._message is not None
        return self._message.created_at

    def _seq(self) -> int:
        assert self._message is not None
        return self._message.seq

    # -- the calls ------------------------------------------------------------------------------

    def now(self) -> datetime:
        """The time as of this point of the run: deterministic across re-executions."""
        op = self._recorded("now")
        if op is None:
            op = {"kind": "now", "result": self._now_dt().isoformat()}
            self._record(op)
        return as_utc(datetime.fromisoformat(op["result"]))

    def log(self, text: str) -> None:
        """Write a line to the run's log (shown by ``garrison inspect``) and to the ``garrison.journey``
        logger, once: not again when the function re-executes over its history."""
        if self.replaying or self._perform_op is not None:
            return
        lines = self._run.setdefault("log", [])
        lines.append({"at": self._now_dt().isoformat(), "text": str(text)})
        del lines[:-LOG_LINES]
        log.info(str(text), extra={"journey": self._journey.name, "key": self.key, "run": self.run})

    def wait_for(
        self,
        event: str,
        *,
        match: Mapping[str, Any] | None = None,
        timeout: Duration | None = None,
    ) -> list[Message] | None:
        """The matching events (see the module's look-back rule), or None when ``timeout`` passes first.
        Without a timeout the run waits as long as it takes."""
        if not isinstance(event, str) or not event:
            raise ValidationError("wait_for needs an event name", field="event")
        match_json = ensure_json(dict(match or {}), "wait_for match")
        delta = None if timeout is None else parse_duration(timeout, field="timeout")
        op = self._recorded("wait", event, match_json)
        if op is not None:
            result = op["result"]
            return None if result is None else [event_message(self.tenant, self.key, e) for e in result]
        mkey = canonical([event, match_json])
        marks = self._run.setdefault("marks", {})
        lower = max(int(self._run["trigger"]["seq"]), int(marks.get(mkey, 0)))
        found = self._look(event, match_json, lower)
        if found:
            marks[mkey] = found[-1].seq
            self._record({"kind": "wait", "name": event, "label": match_json, "match": match_json,
                          "result": [event_json(m) for m in found]})
            return found
        if delta is not None and delta.total_seconds() <= 0:
            self._record({"kind": "wait", "name": event, "label": match_json, "match": match_json, "result": None})
            return None
        pending: dict[str, Any] = {"op": self._i, "kind": "wait", "name": event, "match": match_json, "mkey": mkey}
        if delta is not None:
            pending["timeout"] = format_duration(delta)
            self._timer(pending, self._now_dt() + delta)
        raise _Suspend("waiting", pending)

    def events(self, event: str, *, match: Mapping[str, Any] | None = None) -> list[Message]:
        """Every matching event ingested for the key since the run's trigger (consumes nothing), and the
        events this run emitted for its key that have not reached the log yet (``seq`` 0): what the
        seed's README counts to space its reminders."""
        match_json = ensure_json(dict(match or {}), "events match")
        op = self._recorded("events", event, match_json)
        if op is None:
            found = self._look(event, match_json, int(self._run["trigger"]["seq"]))
            logged = {m.idempotency_key for m in found if m.idempotency_key}
            for emitted in self._run["history"]:
                if (emitted["kind"] == "emit" and emitted.get("key") == self.key
                        and emitted.get("idempotency_key") not in logged and _name_matches(emitted["name"], event)
                        and matches(emitted.get("data"), match_json)):
                    found.append(Message(
                        tenant=self.tenant, key=self.key, seq=0, event_id=0, name=emitted["name"],
                        data=emitted.get("data") or {}, target=None,
                        created_at=as_utc(datetime.fromisoformat(emitted["at"])),
                        idempotency_key=emitted.get("idempotency_key"),
                    ))
            op = {"kind": "events", "name": event, "label": match_json, "result": [event_json(m) for m in found]}
            self._record(op)
        return [event_message(self.tenant, self.key, e) for e in op["result"]]

    def sleep(self, duration: Duration) -> None:
        """Suspend the run for ``duration`` (``"30s"``, ``"1h"``, ``"7d"``, a timedelta)."""
        delta = parse_duration(duration, field="duration")
        if self._recorded("sleep") is not None:
            return
        self._sleep(self._now_dt() + delta)

    def sleep_until(self, when: datetime) -> None:
        """Suspend the run until ``when`` (timezone-aware; naive means UTC). The past returns at once."""
        if not isinstance(when, datetime):
            raise ValidationError("sleep_until needs a datetime", field="when")
        if self._recorded("sleep") is not None:
            return
        self._sleep(as_utc(when))

    def _sleep(self, until: datetime) -> None:
        if until <= self._now_dt():
            self._record({"kind": "sleep", "until": until.isoformat()})
            return
        pending = {"op": self._i, "kind": "sleep", "until": until.isoformat()}
        self._timer(pending, until)
        raise _Suspend("sleeping", pending)

    def step(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` once, after commit, in a worker; return its memoized JSON result.

        Retried with exponential backoff on error (``GARRISON_EFFECT_MAX_RETRIES``); after the last
        attempt the run fails (retryable). ``fn`` is handed ``idempotency_key=`` when it accepts it:
        stable across attempts and retries of this step, for the API it calls.
        """
        if not isinstance(name, str) or not name:
            raise ValidationError("a step needs a name", field="name")
        if not callable(fn):
            raise ValidationError(f"step {name!r} needs a callable", field="fn")
        op = self._recorded("step", name)
        if op is not None:
            return op["result"]
        if self._perform_op is not None:
            raise _StepCall(fn, args, kwargs)
        pending = {"op": self._i, "kind": "step", "name": name}
        assert self._out is not None
        self._out.effects.append(EffectSpec("step", {"run": self.run, "op": self._i, "step": name}))
        raise _Suspend("stepping", pending)

    def ingest(
        self,
        name: str,
        data: Mapping[str, Any] | None = None,
        *,
        key: str | None = None,
        system: bool = False,
        target: str | None = None,
    ) -> None:
        """Emit an event (for this key unless ``key`` is given), exactly once: it is written in the same
        transaction as the run's progress."""
        op = self._recorded("emit", name)
        if op is not None:
            return
        from garrison.ingest import validate

        assert self._actx is not None and self._out is not None
        checked = validate(name, key if key is not None else self.key, dict(data or {}), tenant=self.tenant,
                           idempotency_key=None, target=target, system=system,
                           max_payload_bytes=self._actx.max_payload_bytes)
        digest = hashlib.sha1(
            canonical([self._journey.name, self.key, self.run, self._i]).encode(), usedforsecurity=False
        ).hexdigest()
        self._out.emits.append(EmitSpec(
            name=checked.name, key=checked.key, data=checked.data, idempotency_key=f"journey:{digest}",
            target=checked.target, system=checked.system,
        ))
        self._record({"kind": "emit", "name": name, "key": checked.key, "data": checked.data,
                      "idempotency_key": f"journey:{digest}", "at": self._now_dt().isoformat()})

    def send(self, name: str, data: Mapping[str, Any] | None = None, *, key: str | None = None,
             target: str | None = None) -> None:
        """Emit an event, optionally only for the automation ``target`` (same as :meth:`ingest`)."""
        self.ingest(name, data, key=key, target=target)

    # -- internals ------------------------------------------------------------------------------

    def _look(self, event: str, match: Mapping[str, Any], lower: int) -> list[Message]:
        message = self._message
        assert message is not None and self._actx is not None
        if self._actx.lookup is None:
            raise GarrisonError("this context cannot read the event log", journey=self._journey.name)
        found = [m for m in self._actx.lookup(event, lower, message.seq) if matches(m.data, match)]
        if (message.seq > lower and message.target is None and _name_matches(message.name, event)
                and matches(message.data, match)):
            found.append(message)
        return found

    def _timer(self, pending: dict[str, Any], due: datetime) -> None:
        assert self._out is not None
        name = f"{self.run}:{self._i}"
        pending["timer"] = name
        pending["due_at"] = due.isoformat()
        self._out.timers.append(TimerSpec(name=name, due_at=due, data={"run": self.run, "op": self._i}))


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
        super().__init__(name)
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
        jc = JourneyContext(self, run, message, ctx, out, tenant=ctx.tenant, key=ctx.key)
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
        jc = JourneyContext(self, clone_json(run), None, None, None, tenant=ctx.tenant, key=ctx.key, perform_op=op)
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


def _report(client: Garrison, automation: str, ctx: EffectContext, name: str, data: dict[str, Any]) -> None:
    client.ingest(name, ctx.key, data, tenant=ctx.tenant, target=automation, system=True,
                  idempotency_key=f"{ctx.idempotency_key}:{name.rsplit('.', 1)[-1]}")


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
