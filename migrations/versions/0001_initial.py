"""events, bakeoff runs and trials

Revision ID: 0001
Revises:
Create Date: 2026-11-22 00:28:02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copy of the column type, as migrations must not import the models.
JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
PATCH_ATTEMPT_ONLY = sa.text("type = 3")
ATTEMPT_STATS_COLUMNS = [
    "mode",
    "model",
    "success",
    "json_valid",
    "latency_ms",
    "ttft_ms",
    "tokens_per_s",
    "prompt_tokens",
    "cached_tokens",
]


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("type", sa.SmallInteger(), nullable=False),
        sa.Column("time_us", sa.BigInteger(), nullable=False),
        sa.Column("role", sa.SmallInteger(), nullable=False),
        sa.Column("mode", sa.SmallInteger(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("backend", sa.Text(), nullable=False),
        sa.Column("stage", sa.SmallInteger(), nullable=False),
        sa.Column("session_id", sa.Text(), nullable=False),
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("is_fallback", sa.Boolean(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("cached_tokens", sa.Integer(), nullable=True),
        sa.Column("tokens_per_s", sa.Float(), nullable=False),
        sa.Column("success", sa.Boolean(), nullable=True),
        sa.Column("json_valid", sa.Boolean(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("policy_hash", sa.Text(), nullable=False),
        sa.Column("bakeoff_run_id", sa.Text(), nullable=False),
        sa.Column("task_id", sa.Text(), nullable=False),
        sa.Column("payload", JSON_DOC, nullable=True),
        sa.Column("request", JSON_DOC, nullable=True),
        sa.Column("response", JSON_DOC, nullable=True),
        sa.Column("capture_mode", sa.String(length=16), nullable=False),
        sa.Column("request_sha256", sa.String(length=64), nullable=False),
        sa.Column("response_sha256", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    op.create_index("ix_events_type_time_us", "events", ["type", "time_us"])
    op.create_index("ix_events_time_us", "events", ["time_us"])
    op.create_index("ix_events_session_id_time_us", "events", ["session_id", "time_us"])
    op.create_index(
        "ix_events_attempts_time_us",
        "events",
        ["time_us"],
        postgresql_include=ATTEMPT_STATS_COLUMNS,
        postgresql_where=PATCH_ATTEMPT_ONLY,
        sqlite_where=PATCH_ATTEMPT_ONLY,
    )

    op.create_table(
        "bakeoff_runs",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("suite", sa.Text(), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("started_us", sa.BigInteger(), nullable=True),
        sa.Column("finished_us", sa.BigInteger(), nullable=True),
        sa.Column("task_count", sa.Integer(), nullable=False),
        sa.Column("summary", JSON_DOC, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bakeoff_runs")),
    )

    op.create_table(
        "bakeoff_trials",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("bakeoff_run_id", sa.Text(), nullable=False),
        sa.Column("task_id", sa.Text(), nullable=False),
        sa.Column("category", sa.Text(), nullable=False),
        sa.Column("mode", sa.SmallInteger(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("backend", sa.Text(), nullable=False),
        sa.Column("success", sa.Boolean(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("json_valid", sa.Boolean(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("tokens_per_s", sa.Float(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("cached_tokens", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("time_us", sa.BigInteger(), nullable=False),
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bakeoff_trials")),
    )
    op.create_index("ix_bakeoff_trials_bakeoff_run_id", "bakeoff_trials", ["bakeoff_run_id"])
    op.create_index("ix_bakeoff_trials_time_us", "bakeoff_trials", ["time_us"])


def downgrade() -> None:
    op.drop_table("bakeoff_trials")
    op.drop_table("bakeoff_runs")
    op.drop_table("events")
