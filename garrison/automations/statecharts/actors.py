"""Actors you can hold: a statechart entity loaded outside the worker (a request handler, a script).

::

    with hold_actor(client, "orders", "o-1", lock="read-write") as order:
        if not order.matches("awaiting_payment"):
            raise Conflict(order.value)
        order.send("order.paid", {"amount": 30})   # a local preview of the transition
    # saved when the block succeeds (not when it raises); the lease is always released

``send`` applies the event to a local copy of the snapshot (the preview) and queues it. ``save`` never
writes the state: it ingests the queued events, targeted at the statechart and stamped with its version,
each with an idempotency key, and applies them at once in this process through the engine (the same
per-key lock and the same handler as the worker), then reloads the committed snapshot. So an actor and
the worker (or two actors) never overwrite each other: when another writer changed the entity since
load, the events apply in order on the *current* state, their guards judged against it. What ``save``
returns and raises:

- a :class:`SaveResult`: each event ``applied`` (it changed the snapshot), ``ignored`` (no transition was
  enabled: none for it in the current state, every guard refused it, or the machine is done) or
  ``failed``; ``snapshot`` is the committed one.
- :class:`~garrison.errors.EventFailed` when an event failed as it was applied (an action raised on the
  current state, or a worker running another version refused it: ``VersionMismatch``). It is recorded
  as a failure (``garrison retry``); the others are applied, and the actor is reloaded.
- :class:`~garrison.errors.ActorLocked` / :class:`~garrison.errors.LeaseLost`: nothing was ingested.

Lock modes (a SQL lease per actor, :mod:`garrison.automations.statecharts.leases`, with an owner token and an expiry):
``"none"`` (the default: the engine already serializes writes), ``"write"`` (the lease is held only
around ``save``) and ``"read-write"`` (held from load to close: no other lock-taking holder may load the
actor meanwhile, so a check-then-send sees no other holder's change; the worker still applies events
ingested by others). Acquiring retries every 200 ms up to ``acquire_timeout`` (5 s), then raises
:class:`~garrison.errors.ActorLocked` naming the holder. Leases are not re-entrant. A lease is never
leaked: a failed load or save releases it, ``close`` always does, and a killed process's lease expires
after ``lease_ttl`` (renewed by ``send``, ``save`` and ``renew`` while held).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from sqlalchemy import select

from garrison.automations.statecharts.chart import Statechart, Step
from garrison.automations.statecharts.leases import ACQUIRE_TIMEOUT, LEASE_TTL, LOCK_MODES, ActorLease, LockMode
from garrison.automations.statecharts.saves import SaveResult, SentEvent
from garrison.core import leases
from garrison.core.contract import Message
from garrison.core.ingest import EventIn, IngestedEvent, validate
from garrison.core.jsondata import check_text, clone_json
from garrison.core.namespace import reserved
from garrison.core.runner import Runner
from garrison.core.runtime import Runtime
from garrison.errors import ActorError, EventFailed, ValidationError
from garrison.models import CURSORS, ENTITIES, FAILURES, VERSIONS

log = logging.getLogger("garrison.actors")

__all__ = ["Actor", "LockMode", "SaveResult", "SentEvent", "hold_actor", "load_actor"]

MAX_ROUNDS = 1000


class Actor:
    """One statechart entity held by this process. Build it with :func:`load_actor` or :func:`hold_actor`."""

    def __init__(
        self,
        client: Runtime,
        chart: Statechart,
        key: str,
        *,
        tenant: str,
        lock: LockMode,
        acquire_timeout: float,
        lease_ttl: float,
    ) -> None:
        self.client = client
        self.chart = chart
        self.key = key
        self.tenant = tenant
        self.lock = lock
        self._lease = ActorLease(client, chart.name, key, tenant=tenant, lock=lock, acquire_timeout=acquire_timeout,
                                 ttl=lease_ttl)
        self.committed: dict[str, Any] | None = None
        self.snapshot: dict[str, Any] | None = None
        self.version = 0
        self.closed = False
        self._pending: list[EventIn] = []
        self._sent = 0

    def __repr__(self) -> str:
        return f"<Actor {self.chart.name}/{self.key} lock={self.lock} value={self.value!r}>"

    @property
    def lease(self) -> leases.LeaseState | None:
        """The tenure of this actor's lease held now; None when it holds none."""
        return self._lease.state

    @property
    def owner(self) -> str:
        """This holder's lease owner token (also in its events' idempotency keys)."""
        return self._lease.owner

    # -- reading the preview --------------------------------------------------------------------

    @property
    def automation(self) -> str:
        return self.chart.name

    @property
    def value(self) -> Any:
        """The previewed state value (xstate's nested form); None before the machine started."""
        return None if self.snapshot is None else self.snapshot["value"]

    @property
    def context(self) -> dict[str, Any]:
        """A copy of the previewed context."""
        return {} if self.snapshot is None else dict(clone_json(self.snapshot["context"]))

    @property
    def done(self) -> bool:
        return self.snapshot is not None and self.snapshot["status"] == "done"

    @property
    def pending(self) -> list[str]:
        """Names of the events sent and not saved yet, in order."""
        return [e.name for e in self._pending]

    def matches(self, state: str) -> bool:
        """Whether the previewed configuration has ``state`` (a dotted path such as ``"shipping.packed"``)."""
        return self.snapshot is not None and state in self.snapshot["entered"]

    def can(self, event: str, data: Mapping[str, Any] | None = None) -> bool:
        """Whether ``event`` would take a transition now (in the preview); changes nothing."""
        self.chart.check_event(event)
        return self._step(event, dict(data or {}), None).handled

    # -- acting ---------------------------------------------------------------------------------

    def send(
        self, event: str, data: Mapping[str, Any] | None = None, *, idempotency_key: str | None = None
    ) -> Step:
        """Apply ``event`` to the preview and queue it for :meth:`save`. Returns what it did in the preview
        (``handled`` False: no transition was enabled there). An unknown event or bad data is refused
        here with a ValidationError; an action that raises propagates and queues nothing.

        ``idempotency_key`` (e.g. your request id) makes a repeated request apply the event only once."""
        self._check_open()
        self.chart.check_event(event)
        self._sent += 1
        ik = idempotency_key or reserved("actor", self.owner, self._sent)
        checked = validate(
            event, self.key, self.chart.stamp(data), tenant=self.tenant, idempotency_key=ik, target=self.chart.name,
            max_payload_bytes=self.client.settings.max_payload_bytes, max_nesting=self.client.settings.max_nesting,
        )
        self._lease.keep()
        step = self._step(event, {k: v for k, v in checked.data.items() if k != "$machine"}, ik)
        self.snapshot = step.snapshot
        self._pending.append(checked)
        return step

    def save(self) -> SaveResult:
        """Ingest the queued events and apply them now through the engine; reload. See the module doc."""
        self._check_open()
        if not self._pending:
            return SaveResult(self.committed)
        self._lease.before_save()
        try:
            written = self._lease.write(self._pending)
            sent, self._pending = self._pending, []
            self._apply(written)
            result = SaveResult(None, self._outcomes(sent, written))
            self._read()
            result.snapshot = self.committed
        finally:
            self._lease.after_save()
        if result.failed:
            first = result.failed[0]
            raise EventFailed(
                f"{len(result.failed)} of {len(result.events)} events failed when applied to "
                f"{self.chart.name}/{self.key}; first: {first.name!r}: {first.error}",
                automation=self.chart.name, key=self.key, tenant=self.tenant, event=first.name,
                failure_id=first.failure_id, result=result,
            )
        return result

    def reload(self) -> None:
        """Read the committed snapshot again, dropping events sent and not saved."""
        self._check_open()
        self._lease.keep()
        self._pending = []
        self._read()

    def renew(self) -> None:
        """Extend a read-write lease by its TTL; :class:`LeaseLost` when it is gone."""
        self._check_open()
        self._lease.renew()

    def close(self) -> None:
        """Release the lease (if held). Events sent and not saved are dropped. Safe to call twice."""
        if self.closed:
            return
        self.closed = True
        if self._pending:
            log.info("actor closed with unsaved events", extra={"automation": self.chart.name, "key": self.key,
                                                                 "events": len(self._pending)})
        self._pending = []
        self._lease.release()

    def __enter__(self) -> Actor:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if exc_type is None:
                self.save()
        finally:
            self.close()

    # -- internals ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise ActorError("the actor is closed", automation=self.chart.name, key=self.key, tenant=self.tenant)

    def _step(self, event: str, data: dict[str, Any], ik: str | None) -> Step:
        now = self.client.clock.now()
        message = Message(
            tenant=self.tenant, key=self.key, seq=0, event_id=0, name=event, data=data, target=self.chart.name,
            created_at=now, idempotency_key=ik,
        )
        return self.chart.step(clone_json(self.snapshot), message, key=self.key, now=now)

    def _read(self) -> None:
        with self.client.db.session() as s:
            row = s.execute(
                select(ENTITIES.c.state, ENTITIES.c.version).where(
                    ENTITIES.c.tenant == self.tenant, ENTITIES.c.automation == self.chart.name,
                    ENTITIES.c.key == self.key,
                )
            ).first()
        state, version = (None, 0) if row is None else (row.state, int(row.version))
        self.committed = self.chart.restore(state, self.key)
        self.snapshot = clone_json(self.committed)
        self.version = version

    def _apply(self, written: list[IngestedEvent]) -> None:
        """Apply the key's messages up to our last event in this process, as a worker would."""
        runner = Runner(self.client)
        engine = self.client.engine
        # A duplicate may be an event of another key (idempotency keys are per tenant): not ours to wait for.
        mine = [e.seq for e in written if e.key == self.key]
        if not mine:
            return
        last = max(mine)
        for _ in range(MAX_ROUNDS):
            if self._cursor() >= last:
                return
            result = engine.process(self.tenant, [self.key])
            runner.dispatch_effects(self.tenant, result.effect_ids, result.effect_labels)
            runner.dispatch_timers(self.tenant, result.timer_dues)
            # This key too: an event a state emitted on entry (for another automation of the key) comes
            # after our last one, so this loop does not apply it; a worker must, now.
            woken = sorted(result.woken)
            if woken:
                try:
                    self.client.publisher.publish_keys(self.tenant, woken)
                except Exception:
                    log.warning("publish failed; the relay will pick these keys up", exc_info=True)
        raise ActorError(
            f"the events saved for {self.chart.name}/{self.key} were not applied after {MAX_ROUNDS} rounds; "
            "the workers will apply them", automation=self.chart.name, key=self.key, tenant=self.tenant,
        )

    def _cursor(self) -> int:
        with self.client.db.session() as s:
            seq = s.execute(
                select(CURSORS.c.processed_seq).where(CURSORS.c.tenant == self.tenant, CURSORS.c.key == self.key)
            ).scalar()
        return int(seq or 0)

    def _outcomes(self, sent: list[EventIn], written: list[IngestedEvent]) -> list[SentEvent]:
        ids = [e.id for e in written]
        name = self.chart.name
        with self.client.db.session() as s:
            failures = {
                r.event_id: r for r in s.execute(
                    select(FAILURES.c.id, FAILURES.c.event_id, FAILURES.c.error_type, FAILURES.c.error).where(
                        FAILURES.c.tenant == self.tenant, FAILURES.c.automation == name, FAILURES.c.event_id.in_(ids),
                    )
                )
            }
            applied = set(s.execute(
                select(VERSIONS.c.event_id).where(
                    VERSIONS.c.tenant == self.tenant, VERSIONS.c.automation == name, VERSIONS.c.key == self.key,
                    VERSIONS.c.event_id.in_(ids),
                )
            ).scalars())
        out = []
        for event, stored in zip(sent, written, strict=True):
            failure = failures.get(stored.id)
            status = "failed" if failure else "applied" if stored.id in applied else "ignored"
            out.append(SentEvent(
                name=event.name, data={k: v for k, v in event.data.items() if k != "$machine"},
                idempotency_key=event.idempotency_key or "", event_id=stored.id, status=status,
                duplicate=stored.duplicate,
                error=f"{failure.error_type}: {failure.error}" if failure else None,
                failure_id=failure.id if failure else None,
            ))
        return out


def load_actor(
    client: Runtime,
    automation: str,
    key: str,
    *,
    lock: LockMode = "none",
    tenant: str | None = None,
    acquire_timeout: float = ACQUIRE_TIMEOUT,
    lease_ttl: float = LEASE_TTL,
) -> Actor:
    """Load the statechart entity ``(automation, key)``; with ``lock="read-write"`` hold its lease until
    :meth:`Actor.close`. A load that fails after taking the lease releases it before raising."""
    chart = client.registry.get(automation)
    if not isinstance(chart, Statechart):
        raise ValidationError(
            f"{automation!r} is a {chart.style}, not a statechart: only statecharts can be held as actors",
            field="automation", automation=automation,
        )
    if not isinstance(key, str) or not key.strip() or len(key) > 255 or check_text(key):
        raise ValidationError("key must be a non-empty string of at most 255 characters, with no NUL or lone "
                              "surrogate", field="key")
    if lock not in LOCK_MODES:
        raise ValidationError(f"lock must be one of {', '.join(LOCK_MODES)}, not {lock!r}", field="lock")
    for name, value in (("acquire_timeout", acquire_timeout), ("lease_ttl", lease_ttl)):
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or (
            name == "lease_ttl" and value == 0
        ):
            raise ValidationError(f"{name} must be a positive number of seconds, not {value!r}", field=name)
    actor = Actor(client, chart, key, tenant=client.tenant_of(tenant), lock=lock,
                  acquire_timeout=float(acquire_timeout), lease_ttl=float(lease_ttl))
    actor._lease.on_load()
    try:
        actor._read()
    except BaseException:
        actor.close()
        raise
    return actor


@contextmanager
def hold_actor(
    client: Runtime,
    automation: str,
    key: str,
    *,
    lock: LockMode = "none",
    tenant: str | None = None,
    acquire_timeout: float = ACQUIRE_TIMEOUT,
    lease_ttl: float = LEASE_TTL,
) -> Iterator[Actor]:
    """Load an actor for the block; save it when the block succeeds (not when it raises); always close
    it, which releases its lease, whether the load, the block or the save failed."""
    actor = load_actor(client, automation, key, lock=lock, tenant=tenant, acquire_timeout=acquire_timeout,
                       lease_ttl=lease_ttl)
    with actor:
        yield actor
