"""The baseline: every table, index and constraint of garrison 0.1 (what ``create_all`` made before
migrations existed).

Revision ID: 0001
Revises:
Create Date: 2026-11-30

``TABLES`` maps each table to the function that creates it with its indexes: :mod:`garrison.ops.migrate`
uses it to finish a database made by ``create_all`` that lacks some of them, before recording this
revision. The types are spelled out here, not imported from the models, so this file stays what it
was when the models change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# JSONB on PostgreSQL, JSON elsewhere; a BIGINT id, but INTEGER on SQLite (only an INTEGER PRIMARY KEY
# auto-increments there).
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
WHEN = sa.DateTime(timezone=True)


def _id() -> sa.Column[int]:
    return sa.Column("id", BIG_ID, primary_key=True, autoincrement=True, nullable=False)


def _tenant(primary_key: bool = False) -> sa.Column[str]:
    return sa.Column("tenant", sa.String(64), primary_key=primary_key, nullable=False)


def events() -> None:
    op.create_table(
        "garrison_events",
        _id(),
        _tenant(),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("data", JSON, nullable=False),
        sa.Column("target", sa.String(255), nullable=True),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("system", sa.Boolean(), nullable=False),
        sa.Column("created_at", WHEN, nullable=False),
        sa.UniqueConstraint("tenant", "key", "seq", name="uq_garrison_events_key_seq"),
        sa.UniqueConstraint("tenant", "idempotency_key", name="uq_garrison_events_idempotency"),
    )
    op.create_index("ix_garrison_events_tenant_name", "garrison_events", ["tenant", "name"])


def streams() -> None:
    op.create_table(
        "garrison_streams",
        _tenant(primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True, nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", WHEN, nullable=False),
    )
    op.create_index("ix_garrison_streams_updated_at", "garrison_streams", ["updated_at"])


def cursors() -> None:
    op.create_table(
        "garrison_cursors",
        _tenant(primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True, nullable=False),
        sa.Column("processed_seq", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", WHEN, nullable=False),
    )


def entities() -> None:
    op.create_table(
        "garrison_entities",
        _tenant(primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True, nullable=False),
        sa.Column("automation", sa.String(255), primary_key=True, nullable=False),
        sa.Column("state", JSON, nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("cursor", sa.BigInteger(), nullable=False),
        sa.Column("created_at", WHEN, nullable=False),
        sa.Column("updated_at", WHEN, nullable=False),
    )
    op.create_index("ix_garrison_entities_automation", "garrison_entities", ["tenant", "automation", "key"])


def state_versions() -> None:
    op.create_table(
        "garrison_state_versions",
        _tenant(primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True, nullable=False),
        sa.Column("automation", sa.String(255), primary_key=True, nullable=False),
        sa.Column("version", sa.Integer(), primary_key=True, autoincrement=False, nullable=False),
        sa.Column("state", JSON, nullable=True),
        sa.Column("message", sa.String(255), nullable=False),
        sa.Column("data", JSON, nullable=True),
        sa.Column("event_id", sa.BigInteger(), nullable=True),
        sa.Column("seq", sa.BigInteger(), nullable=True),
        sa.Column("created_at", WHEN, nullable=False),
    )


def effects() -> None:
    op.create_table(
        "garrison_effects",
        _id(),
        _tenant(),
        sa.Column("automation", sa.String(255), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", WHEN, nullable=False),
        sa.Column("dispatched_at", WHEN, nullable=True),
        sa.Column("done_at", WHEN, nullable=True),
    )
    op.create_index("ix_garrison_effects_status", "garrison_effects", ["status", "created_at"])


def failures() -> None:
    op.create_table(
        "garrison_failures",
        _id(),
        _tenant(),
        sa.Column("automation", sa.String(255), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=True),
        sa.Column("seq", sa.BigInteger(), nullable=True),
        sa.Column("message", sa.String(255), nullable=False),
        sa.Column("error_type", sa.String(255), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("traceback", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("retry_event_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", WHEN, nullable=False),
    )
    op.create_index("ix_garrison_failures_key", "garrison_failures", ["tenant", "key", "status"])


def timers() -> None:
    op.create_table(
        "garrison_timers",
        _id(),
        _tenant(),
        sa.Column("automation", sa.String(255), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("due_at", WHEN, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("data", JSON, nullable=False),
        sa.Column("published_at", WHEN, nullable=True),
        sa.Column("fired_at", WHEN, nullable=True),
        sa.Column("created_at", WHEN, nullable=False),
        sa.UniqueConstraint("tenant", "automation", "key", "name", name="uq_garrison_timers_name"),
    )
    op.create_index("ix_garrison_timers_due", "garrison_timers", ["tenant", "status", "due_at"])


def runs() -> None:
    op.create_table(
        "garrison_runs",
        _id(),
        _tenant(),
        sa.Column("automation", sa.String(255), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("trigger", JSON, nullable=True),
        sa.Column("waiting", JSON, nullable=True),
        sa.Column("history", JSON, nullable=True),
        sa.Column("log", JSON, nullable=True),
        sa.Column("result", JSON, nullable=True),
        sa.Column("error", JSON, nullable=True),
        sa.Column("started_at", WHEN, nullable=False),
        sa.Column("updated_at", WHEN, nullable=False),
        sa.Column("ended_at", WHEN, nullable=True),
        sa.UniqueConstraint("tenant", "automation", "key", "number", name="uq_garrison_runs_number"),
    )
    op.create_index("ix_garrison_runs_status", "garrison_runs", ["tenant", "status", "automation"])


def schedules() -> None:
    op.create_table(
        "garrison_schedules",
        _id(),
        _tenant(),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("automation", sa.String(255), nullable=False),
        sa.Column("message", sa.String(255), nullable=False),
        sa.Column("data", JSON, nullable=False),
        sa.Column("cron", sa.String(255), nullable=True),
        sa.Column("every_seconds", sa.Float(), nullable=True),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("where", JSON, nullable=True),
        sa.Column("missed", sa.String(16), nullable=False),
        sa.Column("missed_limit", sa.Integer(), nullable=False),
        sa.Column("overlap", sa.String(16), nullable=False),
        sa.Column("grace", sa.Float(), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("next_slot", WHEN, nullable=True),
        sa.Column("created_at", WHEN, nullable=False),
        sa.Column("updated_at", WHEN, nullable=False),
        sa.UniqueConstraint("tenant", "name", name="uq_garrison_schedules_name"),
    )


def pulse_slots() -> None:
    op.create_table(
        "garrison_pulse_slots",
        _id(),
        _tenant(),
        sa.Column("schedule_id", sa.BigInteger(), nullable=False),
        sa.Column("schedule", sa.String(255), nullable=False),
        sa.Column("slot", WHEN, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("cursor", sa.String(255), nullable=True),
        sa.Column("total", sa.Integer(), nullable=True),
        sa.Column("done", sa.Integer(), nullable=False),
        sa.Column("started_at", WHEN, nullable=False),
        sa.Column("updated_at", WHEN, nullable=False),
        sa.Column("finished_at", WHEN, nullable=True),
        sa.UniqueConstraint("tenant", "schedule_id", "slot", name="uq_garrison_pulse_slots_slot"),
    )
    op.create_index("ix_garrison_pulse_slots_status", "garrison_pulse_slots", ["tenant", "status"])


def leases() -> None:
    op.create_table(
        "garrison_leases",
        _tenant(primary_key=True),
        sa.Column("name", sa.String(255), primary_key=True, nullable=False),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", WHEN, nullable=False),
        sa.Column("acquired_at", WHEN, nullable=False),
        sa.Column("renewed_at", WHEN, nullable=False),
    )


TABLES: dict[str, Callable[[], None]] = {
    "garrison_events": events,
    "garrison_streams": streams,
    "garrison_cursors": cursors,
    "garrison_entities": entities,
    "garrison_state_versions": state_versions,
    "garrison_effects": effects,
    "garrison_failures": failures,
    "garrison_timers": timers,
    "garrison_runs": runs,
    "garrison_schedules": schedules,
    "garrison_pulse_slots": pulse_slots,
    "garrison_leases": leases,
}


def upgrade() -> None:
    for create in TABLES.values():
        create()


def downgrade() -> None:
    for name in reversed(TABLES):
        op.drop_table(name)  # its indexes go with it
