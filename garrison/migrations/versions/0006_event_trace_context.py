"""Events carry the trace context they were ingested under.

Revision ID: 0006
Revises: 0001
Create Date: 2026-12-02

``garrison_events.trace`` holds a W3C ``traceparent`` when tracing is on (``GARRISON_TRACING=otel``), so a
message applied later, in another process, maybe re-published by the relay, joins its ingest's trace.
Nullable, no default: existing rows need nothing.

PostgreSQL adds the column in place (last, as the model has it). SQLite rebuilds the table under its own
name, so its schema reads exactly as one ``create_all`` makes (an ``ALTER TABLE ... ADD COLUMN`` there would
leave the column after the table's constraints in the stored DDL).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = "id, tenant, key, seq, name, data, target, idempotency_key, system, created_at"


def upgrade() -> None:
    bind = op.get_bind()
    # A database made by create_all (tests, the demo) and adopted at 0001 has the column already.
    if "trace" in {c["name"] for c in sa.inspect(bind).get_columns("garrison_events")}:
        return
    if bind.dialect.name != "sqlite":
        op.add_column("garrison_events", sa.Column("trace", sa.String(length=64), nullable=True))
        return
    op.drop_index("ix_garrison_events_tenant_name", table_name="garrison_events")
    op.rename_table("garrison_events", "_garrison_events_0006")
    base = importlib.import_module("garrison.migrations.versions.0001_initial")  # its column helpers
    op.create_table(
        "garrison_events",
        base._id(),
        base._tenant(),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("data", base.JSON, nullable=False),
        sa.Column("target", sa.String(255), nullable=True),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("system", sa.Boolean(), nullable=False),
        sa.Column("created_at", base.WHEN, nullable=False),
        sa.Column("trace", sa.String(length=64), nullable=True),
        sa.UniqueConstraint("tenant", "key", "seq", name="uq_garrison_events_key_seq"),
        sa.UniqueConstraint("tenant", "idempotency_key", name="uq_garrison_events_idempotency"),
    )
    op.execute(f"INSERT INTO garrison_events ({COLUMNS}) SELECT {COLUMNS} FROM _garrison_events_0006")
    op.drop_table("_garrison_events_0006")
    op.create_index("ix_garrison_events_tenant_name", "garrison_events", ["tenant", "name"])


def downgrade() -> None:
    with op.batch_alter_table("garrison_events") as batch:
        batch.drop_column("trace")
