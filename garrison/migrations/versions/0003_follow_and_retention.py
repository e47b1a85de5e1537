"""The change feed and retention: a commit-safe ``txid`` on every state version, the indexes retention finds
old rows through, and the table where retention stands per tenant and rule.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

Existing versions get ``txid`` 0 ("written before the feed existed"): ``follow`` from the start delivers
them first, in key order, and retention walks them first. On PostgreSQL the column is added with a
constant default, which does not rewrite the table. SQLite cannot add a column where ``create_all`` puts
it, so there the table is rebuilt: renamed away, created anew, its rows copied over.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
WHEN = sa.DateTime(timezone=True)

INDEXES = [
    ("ix_garrison_events_created", "garrison_events", ["tenant", "created_at"]),
    ("ix_garrison_failures_status", "garrison_failures", ["tenant", "status", "created_at"]),
    ("ix_garrison_runs_ended", "garrison_runs", ["tenant", "status", "ended_at"]),
    ("ix_garrison_runs_key", "garrison_runs", ["tenant", "key", "status"]),
    ("ix_garrison_pulse_slots_finished", "garrison_pulse_slots", ["tenant", "status", "finished_at"]),
]
VERSION_COLUMNS = ("tenant", "key", "automation", "version", "state", "message", "data", "event_id", "seq",
                   "created_at")


def _versions_table(name: str, with_txid: bool) -> None:
    columns: list[sa.schema.SchemaItem] = [
        sa.Column("tenant", sa.String(64), primary_key=True, nullable=False),
        sa.Column("key", sa.String(255), primary_key=True, nullable=False),
        sa.Column("automation", sa.String(255), primary_key=True, nullable=False),
        sa.Column("version", sa.Integer(), primary_key=True, autoincrement=False, nullable=False),
        sa.Column("state", JSON, nullable=True),
        sa.Column("message", sa.String(255), nullable=False),
        sa.Column("data", JSON, nullable=True),
        sa.Column("event_id", sa.BigInteger(), nullable=True),
        sa.Column("seq", sa.BigInteger(), nullable=True),
        sa.Column("created_at", WHEN, nullable=False),
    ]
    if with_txid:
        columns.append(sa.Column("txid", sa.BigInteger(), nullable=False, server_default="0"))
    op.create_table(name, *columns)


def _rebuild_versions_on_sqlite(with_txid: bool) -> None:
    """Rename the table away, create it again as the models have it, copy the rows, drop the old one: the
    stored definition then reads exactly as ``create_all`` writes it (``ALTER TABLE ... ADD COLUMN`` would
    append to its text, and alembic's batch mode leaves the name quoted)."""
    op.execute("ALTER TABLE garrison_state_versions RENAME TO garrison_state_versions_old")
    _versions_table("garrison_state_versions", with_txid)
    names = ", ".join(VERSION_COLUMNS)
    op.execute(f"INSERT INTO garrison_state_versions ({names}) SELECT {names} FROM garrison_state_versions_old")
    op.execute("DROP TABLE garrison_state_versions_old")


def _retention_table() -> None:
    op.create_table(
        "garrison_retention",
        sa.Column("tenant", sa.String(64), primary_key=True, nullable=False),
        sa.Column("rule", sa.String(64), primary_key=True, nullable=False),
        sa.Column("position", JSON, nullable=True),
        sa.Column("deleted_txid", sa.BigInteger(), nullable=False),
        sa.Column("deleted", sa.BigInteger(), nullable=False),
        sa.Column("last_run_at", WHEN, nullable=True),
        sa.Column("updated_at", WHEN, nullable=False),
    )


def upgrade() -> None:
    # A database made by ``create_all`` from these models is adopted at the baseline and upgraded from
    # there: what it has already is left as it is.
    found = sa.inspect(op.get_bind())
    if "txid" not in {c["name"] for c in found.get_columns("garrison_state_versions")}:
        if op.get_bind().dialect.name == "sqlite":
            _rebuild_versions_on_sqlite(with_txid=True)
        else:
            op.add_column("garrison_state_versions",
                          sa.Column("txid", sa.BigInteger(), nullable=False, server_default="0"))
    for name, table, columns in [("ix_garrison_state_versions_txid", "garrison_state_versions", ["tenant", "txid"]),
                                 *INDEXES]:
        if name not in {i["name"] for i in found.get_indexes(table)}:
            op.create_index(name, table, columns)
    if not found.has_table("garrison_retention"):
        _retention_table()


def downgrade() -> None:
    op.drop_table("garrison_retention")
    for name, table, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table)
    op.drop_index("ix_garrison_state_versions_txid", table_name="garrison_state_versions")
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_versions_on_sqlite(with_txid=False)
    else:
        op.drop_column("garrison_state_versions", "txid")
