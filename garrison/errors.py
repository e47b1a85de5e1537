"""Every error garrison raises, under one base class.

::

    GarrisonError
    ├── ConfigurationError      settings that cannot work (names the field)
    ├── ValidationError         an ingest or send argument refused (names the field); nothing written
    │   ├── PayloadTooLarge
    │   └── UnknownNode         a node name its node system does not define (names the system and node)
    ├── DefinitionError         an automation defined wrongly (names the automation and the part)
    ├── UnknownAutomation       a name the registry does not have
    ├── NotFound                an entity, failure or run that does not exist for this tenant
    │   └── CursorExpired       a follow cursor behind what retention deleted (names the field)
    ├── ReplayMismatch          a replay or determinism check found a stored state it cannot reproduce
    ├── DeterminismError        a journey's code no longer makes the calls its live run's history recorded
    ├── VersionMismatch         a statechart event or snapshot of another machine version (names both)
    ├── MigrationError          the schema cannot be migrated as asked (unknown revision, unreachable database)
    ├── DatabaseUnavailable     the database cannot be reached, or dropped the connection (a restart)
    └── ActorError              an actor held outside the worker (statecharts.actors) cannot go on
        ├── ActorLocked         another owner holds its lease past the acquire timeout (names the holder)
        ├── LeaseLost           its read-write lease expired or was taken before save: nothing was saved
        └── EventFailed         a sent event failed when the engine applied it (names the event, failure)
"""

from __future__ import annotations

from typing import Any


class GarrisonError(Exception):
    """Base of every garrison error. Carries the context a user needs as attributes."""

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context = context
        for name, value in context.items():
            setattr(self, name, value)

    def __str__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.context.items() if v is not None)
        return f"{self.message} ({shown})" if shown else self.message


class ConfigurationError(GarrisonError):
    """Settings that cannot work."""


class ValidationError(GarrisonError):
    """An argument to ingest or send was refused; nothing was written. ``field`` names it."""

    field: str


class PayloadTooLarge(ValidationError):
    """The event data is larger than ``GARRISON_MAX_PAYLOAD_BYTES``."""


class UnknownNode(ValidationError):
    """A node system was asked for a node it does not define (``field`` is ``node``); nothing written."""


class DefinitionError(GarrisonError):
    """An automation was defined wrongly: raised at import, naming the automation and the part."""


class UnknownAutomation(GarrisonError):
    """No automation by that name is registered."""


class NotFound(GarrisonError):
    """The thing asked for does not exist for this tenant."""


class CursorExpired(NotFound):
    """A ``follow`` cursor from before versions retention has deleted: resuming there would skip them, so
    it is refused. ``field`` is ``since``."""


class ReplayMismatch(GarrisonError):
    """Stored state differs from what replaying its inputs produces."""


class DeterminismError(GarrisonError):
    """A journey run was re-executed and its code made a different call than the one its history
    recorded at that position (the code changed under a live run, or depends on something other than
    its inputs). The run is failed with this error; it names the operation."""


class VersionMismatch(GarrisonError):
    """A statechart was handed an event stamped for another version of it (or another machine), or a
    snapshot stored by another version it has no migration from. Names ``expected`` and ``got``."""

    automation: str
    key: str | None
    expected: int
    got: Any


class ActorError(GarrisonError):
    """An actor held outside the worker (:mod:`garrison.automations.statecharts.actors`) cannot go on.
    Names the actor."""

    automation: str
    key: str
    tenant: str


class ActorLocked(ActorError):
    """The actor's lease is held by another owner (``holder``) and was not freed within the acquire
    timeout. Nothing was loaded or saved."""

    holder: str | None
    expires_at: Any
    attempts: int


class LeaseLost(ActorError):
    """A read-write actor's lease expired (or another owner took it) before ``save``: nothing was saved.
    Hold actors for less than their lease TTL, or call ``actor.renew()``."""


class EventFailed(ActorError):
    """An event an actor saved was ingested but failed when applied (its action raised, or another
    version refused it): the message is marked failed (``failure_id``, retryable from the CLI).
    ``result`` is the :class:`~garrison.automations.statecharts.actors.SaveResult` of the whole save."""

    event: str
    failure_id: int | None
    result: Any


class DatabaseUnavailable(GarrisonError):
    """The database could not be reached, or it closed the connection mid-transaction (a restart, a
    failover, an administrator's terminate): the transaction was rolled back, nothing of it was written.
    Retry later; the connection pool reconnects by itself. ``database`` names it (without its password)."""

    database: str


class MigrationError(GarrisonError):
    """The schema cannot be migrated as asked (an unknown revision, a database that cannot be reached)."""
