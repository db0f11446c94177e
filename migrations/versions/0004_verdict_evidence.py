"""verdict evidence: per-trial calls, replies, errors, pass@1, skips, call
latencies, model identity and lint; the suite version of a run; replies counted
apart from errors in the rollups; model-call errors no longer stored as
schema failures

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 00:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies as of this revision.
PATCH_ATTEMPT = 3
BUCKET_US = 3_600_000_000
BUCKET = f"(e.time_us - ((e.time_us % {BUCKET_US}) + {BUCKET_US}) % {BUCKET_US})"

_TRIAL_COUNTERS = ("model_calls", "replies", "schema_valid_replies")


def upgrade() -> None:
    json_doc = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
    with op.batch_alter_table("bakeoff_trials") as t:
        for name in _TRIAL_COUNTERS:
            t.add_column(sa.Column(name, sa.Integer(), nullable=False, server_default="0"))
        t.add_column(
            sa.Column(
                "first_attempt_success", sa.Boolean(), nullable=False, server_default=sa.false()
            )
        )
        t.add_column(sa.Column("skipped", sa.Text(), nullable=False, server_default=""))
        t.add_column(sa.Column("call_latency_ms", json_doc, nullable=True))
        t.add_column(sa.Column("model_identity", sa.Text(), nullable=False, server_default=""))
        t.add_column(sa.Column("lint", sa.Text(), nullable=False, server_default=""))
    # Trials recorded before: pass@1 was "fixed within one attempt".
    op.execute("UPDATE bakeoff_trials SET first_attempt_success = success AND attempts <= 1")
    with op.batch_alter_table("bakeoff_runs") as t:
        t.add_column(sa.Column("suite_version", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("attempt_rollups") as t:
        t.add_column(sa.Column("replies", sa.BigInteger(), nullable=False, server_default="0"))
    # A model call that failed (timeout, cooling down, connection error) got
    # no reply: it is not a schema failure.
    op.execute(
        f"UPDATE events SET json_valid = NULL WHERE type = {PATCH_ATTEMPT} AND reason = 'model_error'"
    )
    op.execute(
        "UPDATE attempt_rollups SET replies = (SELECT count(e.json_valid) FROM events e "
        f"WHERE e.type = {PATCH_ATTEMPT} AND {BUCKET} = attempt_rollups.bucket_us "
        "AND e.mode = attempt_rollups.mode AND e.model = attempt_rollups.model)"
    )


def downgrade() -> None:
    op.execute(
        f"UPDATE events SET json_valid = false WHERE type = {PATCH_ATTEMPT} AND reason = 'model_error'"
    )
    with op.batch_alter_table("attempt_rollups") as t:
        t.drop_column("replies")
    with op.batch_alter_table("bakeoff_runs") as t:
        t.drop_column("suite_version")
    with op.batch_alter_table("bakeoff_trials") as t:
        for name in (
            "lint",
            "model_identity",
            "call_latency_ms",
            "skipped",
            "first_attempt_success",
            *_TRIAL_COUNTERS,
        ):
            t.drop_column(name)
