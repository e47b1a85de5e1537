"""The JSON shapes of the HTTP API. They are what /openapi.json publishes, so the field descriptions are
written for the people calling it from other languages."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from garrison.core.ingest import MAX_NAME

# Per-event keys derived from the header are ``<header>:<index>``: the header leaves room for the index.
MAX_IDEMPOTENCY_HEADER = 200

Text = Annotated[str, Field(min_length=1, max_length=MAX_NAME)]


class EventBody(BaseModel):
    """One event: `name` happened to the entity `key`, with `data`."""

    model_config = ConfigDict(extra="forbid", title="Event")

    name: Text = Field(description="The event's name, e.g. a machine's reducer (`placed`).")
    key: Text = Field(description="The entity the event is about (an order id, a user id).")
    data: dict[str, Any] | None = Field(
        default=None, description="Any JSON object (at most GARRISON_MAX_PAYLOAD_BYTES once encoded)."
    )
    idempotency_key: Text | None = Field(
        default=None,
        description="The same key twice (per tenant) stores the event once; the second answer is the first "
        "event, marked `duplicate`.",
    )
    target: Text | None = Field(default=None, description="Deliver to this automation only.")
    tenant: str | None = Field(
        default=None,
        description="Optional. The tenant is the API key's; a different one here is refused with 403.",
    )


class BatchBody(BaseModel):
    """Several events, stored in one transaction: all of them, or none when one is refused."""

    model_config = ConfigDict(extra="forbid", title="Batch")

    events: list[EventBody] = Field(min_length=1, description="The events, in the order they are sequenced.")


def _kind(value: Any) -> str:
    """A body with `events` is a batch; anything else is checked as one event."""
    if isinstance(value, dict) and "events" in value:
        return "batch"
    if isinstance(value, BatchBody):
        return "batch"
    return "event"


IngestRequest = Annotated[
    Annotated[EventBody, Tag("event")] | Annotated[BatchBody, Tag("batch")],
    Discriminator(_kind),
]


class IngestedOut(BaseModel):
    """An event as stored."""

    id: int = Field(description="The event's id in the tenant's event log.")
    seq: int = Field(description="Its position in the key's stream: messages apply in this order.")
    name: str
    key: str
    target: str | None
    idempotency_key: str | None
    duplicate: bool = Field(description="True when the idempotency key was seen before: nothing new was stored.")
    created_at: datetime


class IngestResponse(BaseModel):
    """What was stored, in the order sent. The automations apply it asynchronously, on the workers."""

    tenant: str
    events: list[IngestedOut]


class FieldError(BaseModel):
    field: str = Field(description="The field refused, e.g. `events[2].name`, `body` or `Idempotency-Key`.")
    message: str


ErrorCode = Literal[
    "unauthorized", "forbidden", "body_too_large", "invalid", "payload_too_large", "not_found", "method_not_allowed",
    "expired",
]


class ErrorOut(BaseModel):
    """Every error answer: a code, a message, and the field at fault when there is one."""

    error: ErrorCode
    message: str
    field: str | None = None
    errors: list[FieldError] = Field(default_factory=list, description="Every field refused (422 only).")


class HealthOut(BaseModel):
    status: Literal["ok", "unavailable"]
    database: str
