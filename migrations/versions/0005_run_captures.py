"""run captures: the workspace a PatchLoop run started from and its verified
fix (capture.mode = full_io); the digest of a bakeoff run's suite

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 03:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    json_doc = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
    op.create_table(
        "run_captures",
        sa.Column("run_id", sa.String(length=128), nullable=False),
        sa.Column("session_id", sa.Text(), nullable=False),
        sa.Column("started_us", sa.BigInteger(), nullable=False),
        sa.Column("workspace", sa.Text(), nullable=False),
        sa.Column("files", json_doc, nullable=True),
        sa.Column("snapshot_bytes", sa.BigInteger(), nullable=False),
        sa.Column("skipped", sa.Text(), nullable=False),
        sa.Column("errors", json_doc, nullable=True),
        sa.Column("build_profile", sa.Text(), nullable=False),
        sa.Column("verify_profile", sa.Text(), nullable=False),
        sa.Column("fixed", sa.Boolean(), nullable=False),
        sa.Column("fixed_by", sa.Text(), nullable=False),
        sa.Column("diff", sa.Text(), nullable=False),
        sa.Column("fix_files", json_doc, nullable=True),
        sa.Column("finished_us", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_run_captures")),
    )
    op.create_index(op.f("ix_run_captures_started_us"), "run_captures", ["started_us"])
    with op.batch_alter_table("bakeoff_runs") as t:
        t.add_column(sa.Column("suite_digest", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("bakeoff_runs") as t:
        t.drop_column("suite_digest")
    op.drop_index(op.f("ix_run_captures_started_us"), table_name="run_captures")
    op.drop_table("run_captures")
