"""The runtime: settings, database, registry, clock and publisher in one object, and the calls every
part of garrison makes on it (ingest, state, replay, retry, runs).

Any process that has the settings can ingest (a Django view, a Flask handler, a script); no worker is
needed in it. The public client, :class:`garrison.Garrison`, is this runtime plus the operations of the
layers above the core (pulse administration, running pending work inline); ``default_client()`` builds
one from the environment on first use.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from garrison.clock import Clock, SystemClock
from garrison.config import Settings
from garrison.core import failures as failed
from garrison.core import instrument
from garrison.core.contract import Automation, defined
from garrison.core.db import Database
from garrison.core.engine import Engine
from garrison.core.history import past_state
from garrison.core.ingest import MAX_TENANT, EventIn, IngestedEvent, check_atomic, validate, write_events
from garrison.core.jsondata import check_text
from garrison.core.publisher import Publisher
from garrison.core.registry import Registry
from garrison.core.replay import Mismatch, ReplayReport, check, replay
from garrison.core.runs import RunInfo, get_run, list_runs, parse_run_id
from garrison.core.timers import TimerBuckets
from garrison.errors import GarrisonError, ValidationError
from garrison.models import ENTITIES, FAILURES, PENDING

log = logging.getLogger("garrison.client")

__all__ = ["IngestedEvent", "Runtime", "configure", "default_client", "set_default_factory"]


class Runtime:
    """garrison for one set of settings: what the core, the styles and the pulses need of a client.

    ``automations`` adds automations to those found in ``settings.automations`` modules; ``publisher``
    replaces the Celery publisher (tests use it to drop messages); ``clock`` replaces system time.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        automations: Iterable[Automation] = (),
        publisher: Publisher | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings or Settings.from_env()
        self.clock: Clock = clock or SystemClock()
        self._extra = tuple(automations)
        self._publisher = publisher
        self._db: Database | None = None
        self._registry: Registry | None = None
        self._lock = threading.Lock()
        # ETA buckets this process has published timer tasks for (see TimerBuckets): kept per client,
        # so every task of a worker process shares it, and two clients in one process do not.
        self.timer_buckets = TimerBuckets()

    # -- lazily built parts -------------------------------------------------------------------

    @property
    def db(self) -> Database:
        if self._db is None:
            with self._lock:
                if self._db is None:
                    self._db = Database(self.settings)
        return self._db

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = Registry.from_modules(self.settings.automations, extra=self._extra)
        return self._registry

    @property
    def publisher(self) -> Publisher:
        if self._publisher is None:
            # The one import of the core that points up (declared in the layer contract): the default
            # publisher is Celery's, imported on first publish, so a process that never publishes
            # never imports Celery. Everything else sees only the Publisher protocol.
            from garrison.tasks.publisher import CeleryPublisher

            self._publisher = CeleryPublisher(self.settings)
        return self._publisher

    @property
    def engine(self) -> Engine:
        return Engine(self.db, self.registry, self.clock, self.settings)

    def register(self, *automations: Automation) -> None:
        for automation in automations:
            self.registry.add(automation)

    def reset_after_fork(self) -> None:
        """Drop connections inherited from a parent process (Celery's prefork children call this)."""
        if self._db is not None:
            self._db.engine.dispose(close=False)

    def tenant_of(self, tenant: str | None) -> str:
        """The tenant a call acts for: the one given, else the default. An empty one is refused."""
        if tenant is None:
            return self.settings.tenant
        if not isinstance(tenant, str) or not tenant.strip() or len(tenant) > MAX_TENANT or check_text(tenant):
            raise ValidationError(
                f"tenant must be a non-empty string of at most {MAX_TENANT} characters, with no NUL or lone "
                "surrogate", field="tenant",
            )
        return tenant

    def init_db(self) -> None:
        """Create garrison's tables from the models, for scripts, tests and the demo. Production uses
        ``garrison db upgrade`` (migrations, with the revision recorded); it adopts a database made here."""
        self.db.create_all()

    # -- ingest -------------------------------------------------------------------------------

    def ingest(
        self,
        name: str,
        key: str,
        data: Mapping[str, Any] | None = None,
        *,
        tenant: str | None = None,
        idempotency_key: str | None = None,
        target: str | None = None,
        system: bool = False,
    ) -> IngestedEvent:
        """Store one event and wake the automations that take it.

        The same ``idempotency_key`` twice (per tenant) returns the first event and processes nothing
        again. ``system=True`` marks an event as bookkeeping (the events seed's flag): it is kept in the log
        and seen by waits, but it starts no journey run.
        """
        event = self.check_event(
            name, key, data, tenant=tenant, idempotency_key=idempotency_key, target=target, system=system
        )
        return self._write([event])[0]

    def ingest_many(self, events: Iterable[Mapping[str, Any]], *, atomic: bool = False) -> list[IngestedEvent]:
        """Store many events in one transaction: all or nothing. Each item is a mapping with the
        arguments of :meth:`ingest` (``name``, ``key``, ``data``, ``tenant``, ``idempotency_key``...).

        ``atomic=True`` (go-state's Aggregate): the events, all for one tenant and one key, also APPLY as
        one: each entity that takes them applies all of them in one transaction, or, when one handler
        raises, none of them (one failure names the batch; a retry applies it again as a whole)."""
        checked = self.check_many(events)
        if atomic:
            check_atomic(checked)
        return self._write(checked, atomic=atomic) if checked else []

    def check_event(
        self,
        name: Any,
        key: Any,
        data: Any = None,
        *,
        tenant: Any = None,
        idempotency_key: Any = None,
        target: Any = None,
        system: Any = False,
        where: str = "",
    ) -> EventIn:
        """Validate one event as :meth:`ingest` does, writing nothing (a :class:`ValidationError` names
        the field). With automations registered, a ``target`` must be one of them, and a machine's
        reducer must exist; a process with none registered (a web process that only ingests) cannot
        know, and stores the event as sent."""
        if tenant is None:
            tenant = self.settings.tenant
        event = validate(
            name, key, data, tenant=tenant, idempotency_key=idempotency_key, target=target,
            system=bool(system), max_payload_bytes=self.settings.max_payload_bytes,
            max_nesting=self.settings.max_nesting, where=where,
        )
        if event.target is not None:
            self.check_target(event.target, event.name, where=where)
        return event

    def check_target(self, target: str, name: str, *, where: str = "") -> None:
        """Refuse a target that no automation of this process has (registered, or defined in a module it
        imported: a listener may send to a machine its worker does not run), or a reducer its machine
        lacks, when this process knows its automations (none registered: nothing to check against)."""
        registry = self.registry
        if not len(registry):
            return
        automation = registry.get(target) if target in registry else defined(target)
        if automation is None:
            raise ValidationError(
                f"{where}target: no automation named {target!r} is registered "
                f"(known: {sorted(a.name for a in registry)})",
                field=where + "target",
            )
        check = getattr(automation, "check_reducer", None)
        if callable(check):
            try:
                check(name)
            except ValidationError as exc:
                raise ValidationError(f"{where}name: {exc.message}", field=where + "name") from exc

    def check_many(self, events: Iterable[Mapping[str, Any]]) -> list[EventIn]:
        """Validate a batch as :meth:`ingest_many` does, writing nothing: the first bad item raises
        :class:`ValidationError` naming ``events[i].field``. For callers that write later (after a
        commit, in another transaction)."""
        checked: list[EventIn] = []
        for i, item in enumerate(events):
            if not isinstance(item, Mapping):
                raise ValidationError(f"events[{i}] must be a mapping", field=f"events[{i}]")
            unknown = set(item) - _EVENT_FIELDS
            if unknown:
                names = sorted(u for u in unknown if isinstance(u, str) and u.isprintable())
                if len(names) == len(unknown):
                    raise ValidationError(f"events[{i}] has unknown fields {names}", field=f"events[{i}].{names[0]}")
                shown = sorted(repr(u) for u in unknown)
                raise ValidationError(f"events[{i}] has unknown fields {', '.join(shown)}", field=f"events[{i}]")
            checked.append(self.check_event(
                item.get("name"), item.get("key"), item.get("data"), tenant=item.get("tenant"),
                idempotency_key=item.get("idempotency_key"), target=item.get("target"),
                system=item.get("system", False), where=f"events[{i}].",
            ))
        return checked

    def _write(self, events: Sequence[EventIn], *, atomic: bool = False) -> list[IngestedEvent]:
        with instrument.current().ingesting(events) as stamped:  # tracing: the ingest span, its context stored
            return self._write_stamped(stamped, atomic=atomic)

    def _write_stamped(self, events: Sequence[EventIn], *, atomic: bool = False) -> list[IngestedEvent]:
        for attempt in range(3):
            try:
                with self.db.session() as s:
                    results = write_events(s, self.db, events, self.clock.now(), atomic=atomic)
                break
            except IntegrityError:
                # Another process stored one of our idempotency keys between our check and insert:
                # run again and it is found as a duplicate.
                if attempt == 2 or not any(e.idempotency_key for e in events):
                    raise
        self.wake(results)
        return results

    def wake(self, results: Iterable[IngestedEvent]) -> None:
        """Publish work for freshly stored events whose key no task is on its way for yet (a task already
        published for the key applies them too). Best-effort: the relay covers a lost publish."""
        by_tenant: dict[str, set[str]] = {}
        for r in results:
            if r.wake and not r.duplicate:
                by_tenant.setdefault(r.tenant, set()).add(r.key)
        for tenant, keys in by_tenant.items():
            try:
                self.publisher.publish_keys(tenant, sorted(keys))
            except Exception:
                log.warning("publish failed; the relay will pick these keys up", exc_info=True,
                            extra={"tenant": tenant, "keys": len(keys)})
                self._unpublished(tenant, sorted(keys))

    def _unpublished(self, tenant: str, keys: Sequence[str]) -> None:
        """No task went out for these keys after all: the next ingest for them tries to publish again (the
        relay does in any case). Best-effort too: the database may be what failed."""
        try:
            with self.db.session() as s:
                s.execute(update(PENDING).where(PENDING.c.tenant == tenant, PENDING.c.key.in_(keys),
                                                PENDING.c.needs.is_(None)).values(published_at=None))
        except Exception:
            log.debug("could not mark keys unpublished", exc_info=True)

    # -- reading and operating ----------------------------------------------------------------

    def state(
        self, automation: str, key: str, *, tenant: str | None = None, version: int | None = None,
        at: datetime | None = None,
    ) -> Any:
        """The committed state of one entity (None when it has none); with ``version=N`` the state it had
        at that version (0: before its first), with ``at=datetime`` the state it had at that moment
        (time travel). A version retention deleted raises :class:`NotFound` saying so."""
        tenant = self.tenant_of(tenant)
        if version is not None or at is not None:
            return past_state(self.db, tenant, automation, key, version=version, at=at).state
        with self.db.session(readonly=True) as s:
            row = s.execute(
                select(ENTITIES.c.state).where(
                    ENTITIES.c.tenant == tenant, ENTITIES.c.automation == automation, ENTITIES.c.key == key
                )
            ).first()
        return None if row is None else row[0]

    def view(self, automation: str, key: str, *, tenant: str | None = None) -> Any:
        """An update loop's ``view`` of its committed model (the model itself for other styles)."""
        auto = self.registry.get(automation)
        state = self.state(automation, key, tenant=tenant)
        view = getattr(auto, "view", None)
        return view(state) if callable(view) else state

    def replay(
        self, automation: str | None = None, key: str | None = None, *, tenant: str | None = None
    ) -> ReplayReport:
        """Rebuild entities from the event log with every side effect skipped; report differences."""
        return replay(self.db, self.registry, self.tenant_of(tenant), automation, key)

    def check(self, automation: str, key: str, *, tenant: str | None = None) -> list[Mismatch]:
        """Re-derive each stored version from the previous one: proves the handler deterministic."""
        return check(self.db, self.registry, self.tenant_of(tenant), automation, key)

    def retry(self, failure_id: int, *, tenant: str | None = None) -> IngestedEvent:
        """Apply a failed message again (see :mod:`garrison.core.failures`).

        For an entity that went on after the failure (``on_failure="skip"``, the default) the message is
        ingested anew for the same automation, through every guarantee of a fresh event, and applied to
        the entity's current state. For an entity halted at it (``on_failure="halt"``) the message itself
        is applied again in place, then the messages that waited. Either way the failure is marked
        ``retried`` with the id of the event returned.
        """
        stored = failed.retry(self.db, self.tenant_of(tenant), failure_id, self.clock.now())
        self.wake([stored])
        return stored

    def skip(self, failure_id: int, *, tenant: str | None = None) -> int:
        """Pass over a failed message for good (``garrison skip``). An entity halted at it goes on with the
        messages after it; the failure is marked ``skipped``. Returns the sequence number it goes on after."""
        tenant = self.tenant_of(tenant)
        after = failed.skip(self.db, tenant, failure_id, self.clock.now())
        with self.db.session() as s:
            key = s.execute(select(FAILURES.c.key).where(FAILURES.c.tenant == tenant, FAILURES.c.id == failure_id)
                            ).scalar_one()
        self.publisher.publish_keys(tenant, [key])
        return after

    def failures(
        self, *, tenant: str | None = None, automation: str | None = None, status: str = "failed"
    ) -> list[int]:
        """Ids of failures (oldest first), for ``garrison retry --all``."""
        tenant = self.tenant_of(tenant)
        query = select(FAILURES.c.id).where(FAILURES.c.tenant == tenant, FAILURES.c.status == status)
        if automation:
            query = query.where(FAILURES.c.automation == automation)
        with self.db.session(readonly=True) as s:
            return list(s.execute(query.order_by(FAILURES.c.id)).scalars())


    # -- journey runs ---------------------------------------------------------------------------

    def runs(
        self,
        *,
        automation: str | None = None,
        key: str | None = None,
        status: str | None = None,
        tenant: str | None = None,
        limit: int = 100,
    ) -> list[RunInfo]:
        """Journey runs, newest first, with their history, log, result or error."""
        return list_runs(self.db, self.tenant_of(tenant), automation=automation, key=key, status=status,
                         limit=limit)

    def run(self, run_id: int | str, *, tenant: str | None = None) -> RunInfo:
        """One run (``12`` or ``"run/12"``) with its timers."""
        return get_run(self.db, self.tenant_of(tenant), parse_run_id(run_id))

    def retry_run(self, run_id: int | str, *, tenant: str | None = None) -> IngestedEvent:
        """Re-execute a failed run from its history (after a fix is deployed, or a step's API is back).
        Sent as a ``garrison/run.retry`` event, applied in order with the key's other messages."""
        return self._run_control(run_id, tenant, "garrison/run.retry", {}, ("failed",))

    def cancel_run(self, run_id: int | str, *, tenant: str | None = None, reason: str | None = None) -> IngestedEvent:
        """Cancel a run: its timers are cancelled (an UPDATE) and it never runs again."""
        return self._run_control(
            run_id, tenant, "garrison/run.cancel", {"reason": reason} if reason else {},
            ("running", "waiting", "sleeping", "stepping", "failed"),
        )

    def _run_control(
        self, run_id: int | str, tenant: str | None, name: str, data: dict[str, Any], allowed: tuple[str, ...]
    ) -> IngestedEvent:
        run = self.run(run_id, tenant=tenant)
        if run.status not in allowed:
            raise GarrisonError(
                f"run {run.id} is {run.status}; {name.rsplit('.', 1)[-1]} takes a run that is {' or '.join(allowed)}",
                tenant=run.tenant, run=run.id,
            )
        return self.ingest(name, run.key, {"run": run.number, **data}, tenant=run.tenant, target=run.automation,
                           system=True)

_EVENT_FIELDS = {"name", "key", "data", "tenant", "idempotency_key", "target", "system"}

_default: Runtime | None = None
_default_lock = threading.Lock()
_factory: Callable[[], Runtime] = Runtime


def set_default_factory(factory: Callable[[], Runtime]) -> None:
    """What :func:`default_client` builds when none was configured (``garrison.client`` sets the public
    :class:`~garrison.Garrison`)."""
    global _factory
    _factory = factory


def default_client() -> Runtime:
    """The process-wide client, built from the environment the first time it is needed."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = _factory()
    return _default


def configure(client: Runtime | None) -> Runtime | None:
    """Set (or with None, forget) the process-wide client. Returns the previous one."""
    global _default
    previous, _default = _default, client
    return previous
