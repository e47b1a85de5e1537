"""Pending keys, tenants and the fleet's automations; entity status; atomic batches; effect heartbeats.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

Each step is skipped when what it makes is there already (a database made by ``create_all`` of a newer
garrison, adopted with only some of its tables, has some of them).

Data: every tenant that has a stream is recorded in ``garrison_tenants``, and every key whose stream is
ahead of its cursor (messages committed, not applied yet) in ``garrison_pending``, so the relay of the
new version finds the work the old one left.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
WHEN = sa.DateTime(timezone=True)


def _where(condition: str) -> dict[str, object]:
    """A partial index's condition, on both PostgreSQL and SQLite."""
    return {"postgresql_where": sa.text(condition), "sqlite_where": sa.text(condition)}


# (table, index name, columns, condition)
INDEXES = [
    ("garrison_pending", "ix_garrison_pending_due", ["tenant", "since"], "needs IS NULL"),
    ("garrison_pending", "ix_garrison_pending_needs", ["tenant", "needs", "since"], "needs IS NOT NULL"),
    ("garrison_effects", "ix_garrison_effects_open", ["tenant", "automation", "key", "id"],
     "status NOT IN ('done', 'failed')"),
    ("garrison_entities", "ix_garrison_entities_waiting", ["tenant", "key", "automation"], "status <> 'active'"),
]
def _new_columns() -> list[tuple[str, sa.Column[object]]]:
    """(table, column): columns added to tables of the first release, in the order the models list them
    (made afresh each time: a column belongs to one table once used)."""
    return [
        ("garrison_events", sa.Column("batch_id", sa.BigInteger(), nullable=True)),
        ("garrison_events", sa.Column("batch_size", sa.Integer(), nullable=True)),
        ("garrison_entities", sa.Column("status", sa.String(16), server_default="active", nullable=False)),
        ("garrison_effects", sa.Column("heartbeat_at", WHEN, nullable=True)),
        ("garrison_effects", sa.Column("next_attempt_at", WHEN, nullable=True)),
    ]


def _tables() -> set[str]:
    return set(sa.inspect(op.get_bind()).get_table_names())


def _columns(table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)}


def _indexes(table: str) -> set[str]:
    return {i["name"] for i in sa.inspect(op.get_bind()).get_indexes(table) if i["name"]}


def upgrade() -> None:
    tables = _tables()
    if "garrison_automations" not in tables:
        op.create_table(
            "garrison_automations",
            sa.Column("name", sa.String(255), nullable=False),
            sa.Column("style", sa.String(64), nullable=False),
            sa.Column("route", JSON, nullable=False),
            sa.Column("holder", sa.String(255), nullable=False),
            sa.Column("first_seen_at", WHEN, nullable=False),
            sa.Column("last_seen_at", WHEN, nullable=False),
            sa.Column("retired_at", WHEN, nullable=True),
            sa.PrimaryKeyConstraint("name"),
        )
    if "garrison_pending" not in tables:
        op.create_table(
            "garrison_pending",
            sa.Column("tenant", sa.String(64), nullable=False),
            sa.Column("key", sa.String(255), nullable=False),
            sa.Column("seq", sa.BigInteger(), nullable=False),
            sa.Column("since", WHEN, nullable=False),
            sa.Column("published_at", WHEN, nullable=True),
            sa.Column("needs", sa.String(255), nullable=True),
            sa.PrimaryKeyConstraint("tenant", "key"),
        )
    if "garrison_tenants" not in tables:
        op.create_table(
            "garrison_tenants",
            sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
            sa.Column("name", sa.String(64), nullable=False),
            sa.Column("created_at", WHEN, nullable=False),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("name", name="uq_garrison_tenants_name"),
        )
    # On SQLite the table is rebuilt with the column (its schema then reads as create_all writes it);
    # PostgreSQL adds the column in place, without copying a row.
    recreate: Literal["always", "auto"] = "always" if op.get_bind().dialect.name == "sqlite" else "auto"
    for table, column in _new_columns():
        if column.name not in _columns(table):
            with op.batch_alter_table(table, recreate=recreate) as batch_op:
                batch_op.add_column(column)
    for table, name, columns, condition in INDEXES:
        if name not in _indexes(table):
            with op.batch_alter_table(table) as batch_op:
                batch_op.create_index(name, columns, unique=False, **_where(condition))
    op.execute(
        "INSERT INTO garrison_tenants (name, created_at) "
        "SELECT DISTINCT s.tenant, CURRENT_TIMESTAMP FROM garrison_streams s "
        "WHERE NOT EXISTS (SELECT 1 FROM garrison_tenants t WHERE t.name = s.tenant)"
    )
    op.execute(
        "INSERT INTO garrison_pending (tenant, key, seq, since) "
        "SELECT s.tenant, s.key, s.last_seq, s.updated_at FROM garrison_streams s "
        "LEFT JOIN garrison_cursors c ON c.tenant = s.tenant AND c.key = s.key "
        "WHERE s.last_seq > COALESCE(c.processed_seq, 0) "
        "AND NOT EXISTS (SELECT 1 FROM garrison_pending p WHERE p.tenant = s.tenant AND p.key = s.key)"
    )


def downgrade() -> None:
    for table, name, _columns_of, condition in reversed(INDEXES):
        if table != "garrison_pending":
            with op.batch_alter_table(table) as batch_op:
                batch_op.drop_index(name, **_where(condition))
    for table, column in reversed(_new_columns()):
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_column(column.name)
    op.drop_table("garrison_tenants")
    op.drop_table("garrison_pending")
    op.drop_table("garrison_automations")
