"""Events carry the trace context they were ingested under.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

``garrison_events.trace`` holds a W3C ``traceparent`` when tracing is on (``GARRISON_TRACING=otel``), so a
message applied later, in another process, maybe re-published by the relay, joins its ingest's trace.
Nullable, no default: existing rows need nothing.

PostgreSQL adds the column in place (last, as the model has it); SQLite rebuilds the table with it, so its
schema reads as one ``create_all`` makes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

def upgrade() -> None:
    bind = op.get_bind()
    # A database made by create_all (tests, the demo) and adopted at an earlier revision has it already.
    if "trace" in {c["name"] for c in sa.inspect(bind).get_columns("garrison_events")}:
        return
    recreate: Literal["always", "auto"] = "always" if bind.dialect.name == "sqlite" else "auto"
    with op.batch_alter_table("garrison_events", recreate=recreate) as batch:
        batch.add_column(sa.Column("trace", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("garrison_events") as batch:
        batch.drop_column("trace")
