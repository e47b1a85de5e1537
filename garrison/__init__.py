"""garrison: many small, persistent, per-entity automations on a Celery worker fleet.

Events go to SQL first, Celery carries the work, SQL is the source of truth.
"""

from garrison.automations.base import Automation, Message
from garrison.automations.machine import Machine, Transition
from garrison.clock import FrozenClock, SystemClock
from garrison.client import Garrison, configure, default_client
from garrison.config import Settings
from garrison.errors import (
    ConfigurationError,
    DefinitionError,
    GarrisonError,
    NotFound,
    PayloadTooLarge,
    ReplayMismatch,
    UnknownAutomation,
    ValidationError,
)
from garrison.ingest import IngestedEvent

__version__ = "0.1.0"

__all__ = [
    "Automation",
    "ConfigurationError",
    "DefinitionError",
    "FrozenClock",
    "Garrison",
    "GarrisonError",
    "IngestedEvent",
    "Machine",
    "Message",
    "NotFound",
    "PayloadTooLarge",
    "ReplayMismatch",
    "Settings",
    "SystemClock",
    "Transition",
    "UnknownAutomation",
    "ValidationError",
    "configure",
    "default_client",
]
