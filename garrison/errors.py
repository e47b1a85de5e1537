"""Every error garrison raises, under one base class.

::

    GarrisonError
    ├── ConfigurationError      settings that cannot work (names the field)
    ├── ValidationError         an ingest or send argument refused (names the field); nothing written
    │   └── PayloadTooLarge
    ├── DefinitionError         an automation defined wrongly (names the automation and the part)
    ├── UnknownAutomation       a name the registry does not have
    ├── NotFound                an entity, failure or run that does not exist for this tenant
    ├── ReplayMismatch          a replay or determinism check found a stored state it cannot reproduce
    └── DeterminismError        a journey's code no longer makes the calls its live run's history recorded
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


class DefinitionError(GarrisonError):
    """An automation was defined wrongly: raised at import, naming the automation and the part."""


class UnknownAutomation(GarrisonError):
    """No automation by that name is registered."""


class NotFound(GarrisonError):
    """The thing asked for does not exist for this tenant."""


class ReplayMismatch(GarrisonError):
    """Stored state differs from what replaying its inputs produces."""


class DeterminismError(GarrisonError):
    """A journey run was re-executed and its code made a different call than the one its history
    recorded at that position (the code changed under a live run, or depends on something other than
    its inputs). The run is failed with this error; it names the operation."""
