"""An index on entities by creation time, for a pulse's last pass over the entities created just before its
slot (garrison.pulses.fanout).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A database made by create_all and adopted at the baseline has it already.
    op.create_index("ix_garrison_entities_created", "garrison_entities", ["tenant", "automation", "created_at"],
                    if_not_exists=True)


def downgrade() -> None:
    op.drop_index("ix_garrison_entities_created", table_name="garrison_entities", if_exists=True)
