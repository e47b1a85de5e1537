"""SQLModel tables. Every row carries a tenant; every query garrison makes filters on it."""

from garrison.models.fleet import AUTOMATIONS, PENDING, TENANTS, AutomationRecord, Pending, Tenant
from garrison.models.pulses import LEASES, PULSE_SLOTS, SCHEDULES, Lease, PulseSlot, Schedule
from garrison.models.retention import RETENTION, RetentionMark  # where retention stands per tenant and rule
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
    "AUTOMATIONS", "CURSORS", "EFFECTS", "ENTITIES", "EVENTS", "FAILURES", "LEASES", "PENDING", "PULSE_SLOTS",
    "RETENTION", "RUNS", "SCHEDULES", "STREAMS", "TENANTS", "TIMERS", "VERSIONS",
    "AutomationRecord", "Cursor", "Effect", "Entity", "Event", "Failure", "Lease", "Pending", "PulseSlot",
    "RetentionMark", "Run", "Schedule", "StateVersion", "Stream", "Tenant", "Timer", "metadata",
]
