"""The lease an actor holds (:mod:`garrison.automations.statecharts.actors`), and when each lock mode takes it.

A SQL lease per actor (:mod:`garrison.core.leases`) with an owner token and an expiry. ``"none"`` never takes
it, ``"write"`` holds it only around ``save`` and ``"read-write"`` from load to close. Acquiring retries
every 200 ms up to ``acquire_timeout`` (5 s), then raises :class:`~garrison.errors.ActorLocked` naming
the holder. Leases are not re-entrant. A lease is never leaked: a failed load or save releases it,
``close`` always does, and a killed process's lease expires after ``lease_ttl`` (renewed by ``send``,
``save`` and ``renew`` while held); a renewal that finds it expired or taken raises
:class:`~garrison.errors.LeaseLost`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, Literal

from sqlalchemy.exc import IntegrityError

from garrison.automations.statecharts.chart import bounded
from garrison.core import leases
from garrison.core.ingest import EventIn, IngestedEvent, write_events
from garrison.core.runtime import Runtime
from garrison.errors import ActorLocked, LeaseLost

log = logging.getLogger("garrison.actors")

__all__ = ["ACQUIRE_TIMEOUT", "LEASE_TTL", "LOCK_MODES", "ActorLease", "LockMode"]

LockMode = Literal["none", "write", "read-write"]
LOCK_MODES = ("none", "write", "read-write")
RETRY_INTERVAL = 0.2
ACQUIRE_TIMEOUT = 5.0
LEASE_TTL = 15.0


class ActorLease:
    """The lease on one actor ``(automation, key)`` under lock mode ``lock``: ``owner`` is this holder's
    token, ``state`` the tenure held now (None when not held)."""

    def __init__(
        self, client: Runtime, automation: str, key: str, *, tenant: str, lock: LockMode, acquire_timeout: float,
        ttl: float,
    ) -> None:
        self.client = client
        self.automation = automation
        self.key = key
        self.tenant = tenant
        self.lock = lock
        self.acquire_timeout = acquire_timeout
        self.ttl = ttl
        self.owner = leases.new_owner(f"actor:{automation}")
        self.name = bounded(f"actor:{automation}:{key}")
        self.state: leases.LeaseState | None = None

    # -- when the actor takes it, per lock mode -------------------------------------------------

    def on_load(self) -> None:
        """Before the actor loads: a read-write lease is taken here and held until close."""
        if self.lock == "read-write":
            self.acquire()

    def before_save(self) -> None:
        """Take a write lease, or confirm (renew) the read-write one: LeaseLost when it is gone."""
        if self.lock == "write":
            self.acquire()
        elif self.lock == "read-write":
            self.confirm()

    def after_save(self) -> None:
        """After a save, whether it succeeded or raised: a write lease is given back."""
        if self.lock == "write":
            self.release()

    def renew(self) -> None:
        """Extend a read-write lease by its TTL; LeaseLost when it is gone."""
        if self.lock == "read-write":
            self.confirm()

    def keep(self) -> None:
        """Renew a read-write lease once a third of its TTL has passed (so a busy holder keeps it)."""
        lease = self.state
        if self.lock != "read-write" or lease is None:
            return
        if (self.client.clock.now() - lease.renewed_at).total_seconds() >= self.ttl / 3:
            self.confirm()

    # -- the lease itself -----------------------------------------------------------------------

    def acquire(self) -> None:
        """Take the lease, retrying every ``RETRY_INTERVAL`` until ``acquire_timeout``; else ActorLocked."""
        deadline = time.monotonic() + self.acquire_timeout
        attempts = 0
        while True:
            attempts += 1
            got = leases.acquire(self.client.db, self.tenant, self.name, self.owner, self.ttl,
                                 self.client.clock.now())
            if got is not None:
                self.state = got
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                held = leases.holder(self.client.db, self.tenant, self.name)
                raise ActorLocked(
                    f"actor {self.automation}/{self.key} is locked by {held.owner if held else 'another owner'}"
                    f"{f' until {held.expires_at.isoformat()}' if held else ''}; gave up after "
                    f"{self.acquire_timeout}s ({attempts} attempts)",
                    automation=self.automation, key=self.key, tenant=self.tenant,
                    holder=held.owner if held else None, expires_at=held.expires_at if held else None,
                    attempts=attempts,
                )
            time.sleep(min(RETRY_INTERVAL, remaining))

    def confirm(self) -> None:
        """Renew the tenure held (same epoch) by the TTL; LeaseLost when it expired or was taken."""
        lease = self.state
        renewed = None if lease is None else leases.renew(
            self.client.db, self.tenant, self.name, self.owner, self.ttl, self.client.clock.now(),
            epoch=lease.epoch,
        )
        if renewed is None:
            self.state = None
            raise LeaseLost(
                f"the lease on actor {self.automation}/{self.key} expired or was taken (TTL {self.ttl}s); "
                "nothing was saved", automation=self.automation, key=self.key, tenant=self.tenant,
            )
        self.state = renewed

    def write(self, events: Sequence[EventIn]) -> list[IngestedEvent]:
        """Write a save's events in ONE transaction that first checks, and renews, this holder's tenure
        (the fence): a holder that stalled after :meth:`before_save` while another owner took the actor
        writes nothing and gets :class:`LeaseLost`. Two copies of one request (the same idempotency key)
        saved at once: the second finds the first's event and returns it as a duplicate."""
        db = self.client.db
        for attempt in range(3):
            try:
                with db.session() as s:
                    if self.lock != "none":
                        self.fence(s)
                    return write_events(s, db, events, self.client.clock.now())
            except IntegrityError:
                # Another process stored one of the idempotency keys between our check and insert: run
                # again and it is found as a duplicate.
                if attempt == 2 or not any(e.idempotency_key for e in events):
                    raise
        raise AssertionError("unreachable")

    def fence(self, session: Any) -> None:
        """Renew the tenure held, in ``session``'s transaction (its row stays locked until commit), or
        raise LeaseLost, which rolls that transaction back."""
        lease = self.state
        renewed = None if lease is None else leases.renew_in(
            session, self.tenant, self.name, self.owner, self.ttl, self.client.clock.now(), epoch=lease.epoch,
        )
        if renewed is None:
            self.state = None
            raise LeaseLost(
                f"the lease on actor {self.automation}/{self.key} was taken by another owner before the save "
                "was written; nothing was saved", automation=self.automation, key=self.key, tenant=self.tenant,
            )
        self.state = renewed

    def release(self) -> None:
        """Give the lease up if held; a failure is logged, never raised (the lease expires by itself)."""
        if self.state is None:
            return
        self.state = None
        try:
            leases.release(self.client.db, self.tenant, self.name, self.owner)
        except Exception:  # never mask the caller's error: the lease expires by itself
            log.warning("could not release an actor lease; it expires after its TTL", exc_info=True,
                        extra={"automation": self.automation, "key": self.key})
