"""garrison: many small, persistent, per-entity automations on a Celery worker fleet.

Events go to SQL first, Celery carries the work, SQL is the source of truth.
"""

from garrison.automations.base import Automation, Message
from garrison.automations.journey import Journey, JourneyContext, journey
from garrison.automations.loop import Command, CommandContext, Msg, UpdateLoop
from garrison.automations.machine import Machine, Transition
from garrison.automations.replay import Mismatch, ReplayReport
from garrison.automations.runs import RunInfo, TimerInfo
from garrison.client import Garrison, configure, default_client
from garrison.clock import FrozenClock, SystemClock
from garrison.config import Settings
from garrison.durations import parse_duration
from garrison.errors import (
    ConfigurationError,
    DefinitionError,
    DeterminismError,
    GarrisonError,
    NotFound,
    PayloadTooLarge,
    ReplayMismatch,
    UnknownAutomation,
    ValidationError,
)
from garrison.ingest import IngestedEvent
from garrison.publisher import NullPublisher, Publisher

__version__ = "0.1.0"

__all__ = [
    "Automation",
    "Command",
    "CommandContext",
    "ConfigurationError",
    "DefinitionError",
    "DeterminismError",
    "FrozenClock",
    "Garrison",
    "GarrisonError",
    "IngestedEvent",
    "Journey",
    "JourneyContext",
    "Machine",
    "Message",
    "Mismatch",
    "Msg",
    "NotFound",
    "NullPublisher",
    "PayloadTooLarge",
    "Publisher",
    "ReplayMismatch",
    "ReplayReport",
    "RunInfo",
    "Settings",
    "SystemClock",
    "TimerInfo",
    "Transition",
    "UnknownAutomation",
    "UpdateLoop",
    "ValidationError",
    "configure",
    "default_client",
    "journey",
    "parse_duration",
]
