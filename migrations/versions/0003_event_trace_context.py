"""event trace context: the W3C trace and span id of the span that recorded
each event, so a PatchLoop run's events lead to its trace ("" = not traced)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 00:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A constant default: no table rewrite on PostgreSQL, existing rows read "".
    with op.batch_alter_table("events") as batch:
        batch.add_column(
            sa.Column("trace_id", sa.String(length=32), server_default="", nullable=False)
        )
        batch.add_column(
            sa.Column("span_id", sa.String(length=16), server_default="", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.drop_column("span_id")
        batch.drop_column("trace_id")
