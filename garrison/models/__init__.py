"""SQLModel tables. Every row carries a tenant; every query garrison makes filters on it."""

from garrison.models.tables import (
    CURSORS,
    EFFECTS,
    ENTITIES,
    EVENTS,
    FAILURES,
    RUNS,
    STREAMS,
    TIMERS,
    VERSIONS,
    Cursor,
    Effect,
    Entity,
    Event,
    Failure,
    Run,
    StateVersion,
    Stream,
    Timer,
    metadata,
)

__all__ = [
    "CURSORS", "EFFECTS", "ENTITIES", "EVENTS", "FAILURES", "RUNS", "STREAMS", "TIMERS", "VERSIONS",
    "Cursor", "Effect", "Entity", "Event", "Failure", "Run", "StateVersion", "Stream", "Timer", "metadata",
]

# Pulse tables live in their own module; importing it registers them with ``metadata``.
from garrison.models.pulses import LEASES, PULSE_SLOTS, SCHEDULES, Lease, PulseSlot, Schedule
from garrison.models.retention import RETENTION, RetentionMark  # where retention stands per tenant and rule

__all__ += ["LEASES", "PULSE_SLOTS", "SCHEDULES", "Lease", "PulseSlot", "Schedule"]
__all__ += ["RETENTION", "RetentionMark"]
