"""The context a journey function is handed: its calls, and their replay over the run's history.

``wait_for``, ``sleep``, ``sleep_until``, ``step``, ``ingest``/``send``, ``events``, ``now`` and ``log``
each append one entry to the run's history when they complete. When the function is re-executed from the
top, every call before the frontier is answered from that entry instead; a call that differs from it
raises :class:`~garrison.errors.DeterminismError`. A call that must wait raises a suspension signal that
:class:`~garrison.automations.journeys.journey.Journey` catches, and the run's lifecycle (triggers, concurrency,
control events) is kept there.

Look-back rule for ``wait_for(name, match=...)``: it sees every matching event ingested for the key
after the run's trigger, including those that arrived before the wait was reached, except events an
earlier ``wait_for`` of the same run with the same name and match already returned. When some exist it
returns them all (oldest first) at once; otherwise it suspends until the next one (returned as a list
of one) or the timeout (``None``). ``ctx.events(name, match=...)`` reads every matching event since the
trigger without consuming anything: the seed's "count earlier reminders".
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from garrison.clock import as_utc
from garrison.core.contract import ApplyContext, EffectSpec, EmitSpec, Message, TimerSpec
from garrison.core.ingest import validate
from garrison.core.jsondata import canonical, ensure_json, json_equal
from garrison.core.namespace import reserved
from garrison.durations import Duration, format_duration, parse_duration
from garrison.errors import DeterminismError, GarrisonError, ValidationError

log = logging.getLogger("garrison.journey")

LOG_LINES = 200


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
        journey: str,
        run: dict[str, Any],
        message: Message | None,
        actx: ApplyContext | None,
        out: _Out | None,
        *,
        tenant: str,
        key: str,
        perform_op: int | None = None,
    ) -> None:
        self._journey_name = journey
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
                    f"journey {self._journey_name!r} run {self.run} for key {self.key!r} changed under a live "
                    f"run: call {self._i + 1} was {describe(op)} when the run made it, but the code now calls "
                    f"{now_calls}",
                    journey=self._journey_name, key=self.key, run=self.run, step=self._i + 1,
                    recorded=describe(op), called=now_calls,
                )
            self._i += 1
            return dict(op)
        if self._perform_op is not None and not (kind == "step" and self._i == self._perform_op):
            raise DeterminismError(
                f"journey {self._journey_name!r} run {self.run} for key {self.key!r}: re-executing to perform "
                f"step {self._perform_op + 1} reached {describe({'kind': kind, 'name': name})} instead",
                journey=self._journey_name, key=self.key, run=self.run, step=self._i + 1,
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
        log.info(str(text), extra={"journey": self._journey_name, "key": self.key, "run": self.run})

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
        assert self._actx is not None and self._out is not None
        checked = validate(name, key if key is not None else self.key, {} if data is None else data, tenant=self.tenant,
                           idempotency_key=None, target=target, system=system,
                           max_payload_bytes=self._actx.max_payload_bytes, max_nesting=self._actx.max_nesting)
        digest = hashlib.sha1(
            canonical([self._journey_name, self.key, self.run, self._i]).encode(), usedforsecurity=False
        ).hexdigest()
        self._out.emits.append(EmitSpec(
            name=checked.name, key=checked.key, data=checked.data, idempotency_key=reserved("journey", digest),
            target=checked.target, system=checked.system,
        ))
        self._record({"kind": "emit", "name": name, "key": checked.key, "data": checked.data,
                      "idempotency_key": reserved("journey", digest), "at": self._now_dt().isoformat()})

    def send(self, name: str, data: Mapping[str, Any] | None = None, *, key: str | None = None,
             target: str | None = None) -> None:
        """Emit an event, optionally only for the automation ``target`` (same as :meth:`ingest`)."""
        self.ingest(name, data, key=key, target=target)

    # -- internals ------------------------------------------------------------------------------

    def _look(self, event: str, match: Mapping[str, Any], lower: int) -> list[Message]:
        message = self._message
        assert message is not None and self._actx is not None
        if self._actx.lookup is None:
            raise GarrisonError("this context cannot read the event log", journey=self._journey_name)
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
