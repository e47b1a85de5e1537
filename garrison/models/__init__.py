"""SQLModel tables. Every row carries a tenant; every query garrison makes filters on it."""

from garrison.models.tables import (
    Cursor,
    Effect,
    Entity,
    Event,
    Failure,
    StateVersion,
    Stream,
    metadata,
)

__all__ = ["Cursor", "Effect", "Entity", "Event", "Failure", "StateVersion", "Stream", "metadata"]
