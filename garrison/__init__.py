"""garrison: many small, persistent, per-entity automations on a Celery worker fleet.

Events go to SQL first, Celery carries the work, SQL is the source of truth.
"""

from garrison.automations.journeys import Journey, JourneyContext, journey
from garrison.automations.loop import Command, CommandContext, Msg, UpdateLoop
from garrison.automations.machine import Machine, Transition
from garrison.automations.nodes import (
    Delivery,
    Node,
    NodeContext,
    NodeEvent,
    Nodes,
    NodeSnapshot,
    NodeState,
    View,
    Views,
)
from garrison.automations.statecharts import Actor, SaveResult, SentEvent, Statechart, Step, hold_actor, load_actor
from garrison.client import Garrison, configure, default_client
from garrison.clock import FrozenClock, SystemClock
from garrison.config import Settings
from garrison.core.contract import Automation, Message
from garrison.core.feed import Change, Follow
from garrison.core.ingest import IngestedEvent
from garrison.core.publisher import NullPublisher, Publisher
from garrison.core.replay import Mismatch, ReplayReport
from garrison.core.runs import RunInfo, TimerInfo
from garrison.durations import parse_duration
from garrison.errors import (
    ActorError,
    ActorLocked,
    ConfigurationError,
    CursorExpired,
    DatabaseUnavailable,
    DefinitionError,
    DeterminismError,
    EventFailed,
    GarrisonError,
    LeaseLost,
    MigrationError,
    NotFound,
    PayloadTooLarge,
    ReplayMismatch,
    UnknownAutomation,
    UnknownNode,
    ValidationError,
    VersionMismatch,
)

__version__ = "0.1.0"

__all__ = [
    "Actor",
    "ActorError",
    "ActorLocked",
    "Automation",
    "Change",
    "Command",
    "CommandContext",
    "ConfigurationError",
    "CursorExpired",
    "DatabaseUnavailable",
    "DefinitionError",
    "Delivery",
    "DeterminismError",
    "EventFailed",
    "Follow",
    "FrozenClock",
    "Garrison",
    "GarrisonError",
    "IngestedEvent",
    "Journey",
    "JourneyContext",
    "LeaseLost",
    "Machine",
    "Message",
    "MigrationError",
    "Mismatch",
    "Msg",
    "Node",
    "NodeContext",
    "NodeEvent",
    "NodeSnapshot",
    "NodeState",
    "Nodes",
    "NotFound",
    "NullPublisher",
    "PayloadTooLarge",
    "Publisher",
    "ReplayMismatch",
    "ReplayReport",
    "RunInfo",
    "SaveResult",
    "SentEvent",
    "Settings",
    "Statechart",
    "Step",
    "SystemClock",
    "TimerInfo",
    "Transition",
    "UnknownAutomation",
    "UnknownNode",
    "UpdateLoop",
    "ValidationError",
    "VersionMismatch",
    "View",
    "Views",
    "configure",
    "default_client",
    "hold_actor",
    "journey",
    "load_actor",
    "parse_duration",
]
