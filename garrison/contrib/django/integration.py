"""The client a Django process uses, and ``ingest`` that knows about Django's transactions.

Two ways an event meets the app's transaction:

- **after commit** (the default): inside an ``atomic`` block the event is validated now (a bad one raises
  here, naming the field) and written by ``transaction.on_commit``, so a rolled-back request ingests
  nothing. Outside a block (autocommit) it is written at once. Either way it goes through garrison's own
  connection and write path, so garrison's database may be anywhere.
- **in the transaction** (``in_transaction=True``; needs ``GARRISON["DATABASE"]``, PostgreSQL): the event
  rows are written on Django's own connection, inside the app's transaction, so they commit or roll back
  with the app's rows, and the stored event (with its id and sequence) is returned at once. The worker is
  woken after commit; if that publish is lost, the relay finds the committed rows.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from garrison.client import Garrison, configure
from garrison.contrib.django.conf import DjangoOptions, read_options
from garrison.core.ingest import EventIn, IngestedEvent, write_events
from garrison.errors import ConfigurationError

__all__ = ["get_client", "ingest", "ingest_many", "reset"]

_EVENT_FIELDS = ("name", "key", "data", "tenant", "idempotency_key", "target", "system")


@dataclass
class _Integration:
    options: DjangoOptions
    client: Garrison
    _bridge: Engine | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def bridge(self) -> Engine:
        if self._bridge is None:
            with self._lock:
                if self._bridge is None:
                    from garrison.contrib.django.bridge import borrowed_engine

                    assert self.options.database is not None
                    self._bridge = borrowed_engine(self.options.database)
        return self._bridge

    def alias(self, using: str | None) -> str:
        from django.db import DEFAULT_DB_ALIAS  # type: ignore[import-untyped]

        return using or self.options.database or DEFAULT_DB_ALIAS

    def write(
        self, events: Sequence[EventIn], using: str | None, in_transaction: bool | None
    ) -> list[IngestedEvent] | None:
        from django.db import connections, transaction

        alias = self.alias(using)
        shared = self.options.in_transaction if in_transaction is None else in_transaction
        if shared:
            if self.options.database is None:
                raise ConfigurationError(
                    'in_transaction=True needs GARRISON["DATABASE"]: garrison\'s tables must be in the app\'s '
                    "(PostgreSQL) database to share its transaction",
                    field="DATABASE",
                )
            if alias != self.options.database:
                raise ConfigurationError(
                    f"using={alias!r}, but garrison's tables are in the Django database "
                    f"{self.options.database!r} (GARRISON[\"DATABASE\"])",
                    field="DATABASE",
                )
            return self._write_in_transaction(events, alias)
        if connections[alias].in_atomic_block:
            transaction.on_commit(partial(self._write_now, events), using=alias)
            return None
        return self._write_now(events)

    def _write_now(self, events: Sequence[EventIn]) -> list[IngestedEvent]:
        # garrison's own path (its connection, its transaction, the idempotency retry, the wake-up).
        return self.client.ingest_many([{f: getattr(e, f) for f in _EVENT_FIELDS} for e in events])

    def _write_in_transaction(self, events: Sequence[EventIn], alias: str) -> list[IngestedEvent]:
        from django.db import connections, transaction

        connections[alias].validate_no_broken_transaction()
        for attempt in range(3):
            try:
                # A savepoint inside the app's block (a transaction of its own outside one): a failed
                # write rolls back to it and leaves the app's transaction usable.
                with (
                    transaction.atomic(using=alias),
                    Session(self.bridge, expire_on_commit=False) as session,
                    session.begin(),
                ):
                    results = write_events(session, self.client.db, events, self.client.clock.now())
                break
            except IntegrityError:
                # A concurrent transaction committed one of our idempotency keys first: run again and
                # it is found as a duplicate.
                if attempt == 2 or not any(e.idempotency_key for e in events):
                    raise
        transaction.on_commit(partial(self.client.wake, results), using=alias)
        return results


_state: _Integration | None = None
_state_lock = threading.Lock()
# Set by the AppConfig: the Django client is also garrison's process-wide default_client().
_owns_default = False


def _integration() -> _Integration:
    global _state
    if _state is None:
        with _state_lock:
            if _state is None:
                options = read_options()
                _state = _Integration(options, Garrison(options.settings))
                if _owns_default:
                    configure(_state.client)
    return _state


def get_client() -> Garrison:
    """The process's garrison client, built from Django's settings on first use (no connection is opened
    until one is needed). With ``garrison.contrib.django`` in ``INSTALLED_APPS`` it is also
    ``garrison.default_client()``, so ``machine.send(...)`` uses the same settings."""
    return _integration().client


def reset() -> None:
    """Forget the client, so the next call reads Django's settings again (``override_settings`` of
    ``GARRISON`` calls this). Its connections are closed."""
    global _state, _owns_default
    with _state_lock:
        old, _state = _state, None
    if old is not None:
        current = configure(None)
        configure(current)
        if current is not old.client:
            _owns_default = False  # someone else's default client now: not ours to replace
        old.client.db.dispose()
    if _owns_default:
        try:
            _integration()
        except ConfigurationError:
            # No stale client meanwhile; the error is raised again, where it can be acted on, by the
            # next get_client() or ingest().
            configure(None)


def ingest(
    name: str,
    key: str,
    data: Mapping[str, Any] | None = None,
    *,
    tenant: str | None = None,
    idempotency_key: str | None = None,
    target: str | None = None,
    system: bool = False,
    using: str | None = None,
    in_transaction: bool | None = None,
) -> IngestedEvent | None:
    """Ingest one event from a Django view, in step with the app's transaction on ``using``.

    Arguments as :meth:`garrison.Garrison.ingest`. Returns the stored event, or None when it waits for
    the commit of the enclosing ``atomic`` block (after-commit mode). A bad argument raises
    :class:`~garrison.errors.ValidationError` now, in either mode.
    """
    state = _integration()
    client = state.client
    event = client.check_event(
        name, key, data, tenant=tenant, idempotency_key=idempotency_key, target=target, system=system
    )
    results = state.write([event], using, in_transaction)
    return None if results is None else results[0]


def ingest_many(
    events: Iterable[Mapping[str, Any]], *, using: str | None = None, in_transaction: bool | None = None
) -> list[IngestedEvent] | None:
    """Ingest a batch in one transaction, all or nothing, as :meth:`garrison.Garrison.ingest_many`, in
    step with the app's transaction like :func:`ingest`. None when the batch waits for the commit."""
    state = _integration()
    checked = state.client.check_many(events)
    if not checked:
        return []
    return state.write(checked, using, in_transaction)


def install() -> None:
    """Called by the AppConfig: make the Django client the process-wide default client."""
    global _owns_default
    _owns_default = True
    configure(get_client())
