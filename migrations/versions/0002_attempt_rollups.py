"""attempt rollups: hourly counters and log-bucketed latency/TTFT histograms
of PatchAttempt events, backfilled from the stored events

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 01:10:00
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of capsule/rollups.py's constants as of this revision: a
# migration must keep producing what it produced when it was written.
BUCKET_US = 3_600_000_000
LN_GAMMA = math.log(1.01 / 0.99)
MIN_VALUE_MS = 0.001
ZERO_BIN = -32768
LATENCY, TTFT = 1, 2
PATCH_ATTEMPT = 3

BUCKET = f"(time_us - ((time_us % {BUCKET_US}) + {BUCKET_US}) % {BUCKET_US})"


def _bin(col: str) -> str:
    return f"(CASE WHEN {col} < {MIN_VALUE_MS!r} THEN {ZERO_BIN} ELSE CAST(ceil(ln({col}) / {LN_GAMMA!r}) AS INTEGER) END)"


BACKFILL_COUNTERS = f"""
INSERT INTO attempt_rollups (bucket_us, mode, model, attempts, successes, json_valid, tokens_per_s_sum,
  tokens_per_s_count, cached_tokens, cached_prompt_tokens, cache_reported)
SELECT {BUCKET}, mode, model, count(*),
  sum(CASE WHEN success THEN 1 ELSE 0 END), sum(CASE WHEN json_valid THEN 1 ELSE 0 END),
  coalesce(sum(CASE WHEN tokens_per_s <> 0 THEN tokens_per_s END), 0),
  sum(CASE WHEN tokens_per_s <> 0 THEN 1 ELSE 0 END),
  coalesce(sum(cached_tokens), 0),
  sum(CASE WHEN cached_tokens IS NOT NULL THEN prompt_tokens ELSE 0 END), count(cached_tokens)
FROM events WHERE type = {PATCH_ATTEMPT}
GROUP BY 1, 2, 3
"""

BACKFILL_BINS = """
INSERT INTO attempt_histograms (bucket_us, mode, model, metric, bin, samples)
SELECT {bucket}, mode, model, {metric}, {bin}, count(*)
FROM events WHERE type = {attempt} AND {col} IS NOT NULL
GROUP BY 1, 2, 3, 4, 5
"""


def _sqlite_math(bind: sa.Connection) -> None:
    """SQLite builds without math functions get ln() and ceil() from Python."""
    if bind.dialect.name != "sqlite":
        return
    try:
        bind.exec_driver_sql("SELECT ln(2.0), ceil(1.5)")
    except sa.exc.OperationalError:
        raw = bind.connection.driver_connection
        raw.create_function("ln", 1, math.log, deterministic=True)
        raw.create_function("ceil", 1, math.ceil, deterministic=True)


def _key_columns() -> list[sa.Column]:
    """(hour, mode, model): the key both tables start with."""
    return [
        sa.Column("bucket_us", sa.BigInteger(), nullable=False),
        sa.Column("mode", sa.SmallInteger(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "attempt_rollups",
        *_key_columns(),
        sa.Column("attempts", sa.BigInteger(), nullable=False),
        sa.Column("successes", sa.BigInteger(), nullable=False),
        sa.Column("json_valid", sa.BigInteger(), nullable=False),
        sa.Column("tokens_per_s_sum", sa.Float(), nullable=False),
        sa.Column("tokens_per_s_count", sa.BigInteger(), nullable=False),
        sa.Column("cached_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cached_prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_reported", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("bucket_us", "mode", "model", name=op.f("pk_attempt_rollups")),
    )
    op.create_table(
        "attempt_histograms",
        *_key_columns(),
        sa.Column("metric", sa.SmallInteger(), nullable=False),
        sa.Column("bin", sa.Integer(), nullable=False),
        sa.Column("samples", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("bucket_us", "mode", "model", "metric", "bin", name=op.f("pk_attempt_histograms")),
    )
    # An upgraded database answers from rollups at once, so they must already
    # hold every stored attempt.
    bind = op.get_bind()
    _sqlite_math(bind)
    op.execute(BACKFILL_COUNTERS)
    for metric, col in ((LATENCY, "latency_ms"), (TTFT, "ttft_ms")):
        op.execute(BACKFILL_BINS.format(bucket=BUCKET, metric=metric, bin=_bin(col), attempt=PATCH_ATTEMPT, col=col))


def downgrade() -> None:
    op.drop_table("attempt_histograms")
    op.drop_table("attempt_rollups")
