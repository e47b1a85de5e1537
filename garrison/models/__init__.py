"""SQLModel tables. Every row carries a tenant; every query garrison makes filters on it."""

from garrison.models.tables import (
    CURSORS,
    EFFECTS,
    ENTITIES,
    EVENTS,
    FAILURES,
    STREAMS,
    VERSIONS,
    Cursor,
    Effect,
    Entity,
    Event,
    Failure,
    StateVersion,
    Stream,
    metadata,
)

__all__ = [
    "CURSORS",
    "EFFECTS",
    "ENTITIES",
    "EVENTS",
    "FAILURES",
    "STREAMS",
    "VERSIONS","Cursor", "Effect", "Entity", "Event", "Failure", "StateVersion", "Stream", "metadata"]
