"""attempt rollups: hourly counters and log-bucketed latency/TTFT histograms
of PatchAttempt events per mode and model, backfilled from the stored events

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 01:10:00
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

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
PATCH_ATTEMPT = 3

BUCKET = f"(time_us - ((time_us % {BUCKET_US}) + {BUCKET_US}) % {BUCKET_US})"


def _bin(col: str) -> str:
    return f"(CASE WHEN {col} < {MIN_VALUE_MS!r} THEN {ZERO_BIN} ELSE CAST(ceil(ln({col}) / {LN_GAMMA!r}) AS INTEGER) END)"


BACKFILL_COUNTERS = f"""
INSERT INTO attempt_rollups (bucket_us, mode, model, attempts, successes, json_valid, tokens_per_s_sum,
  tokens_per_s_count, cached_tokens, cached_prompt_tokens, cache_reported, latency_bins, ttft_bins)
SELECT {BUCKET}, mode, model, count(*),
  sum(CASE WHEN success THEN 1 ELSE 0 END), sum(CASE WHEN json_valid THEN 1 ELSE 0 END),
  coalesce(sum(CASE WHEN tokens_per_s <> 0 THEN tokens_per_s END), 0),
  sum(CASE WHEN tokens_per_s <> 0 THEN 1 ELSE 0 END), coalesce(sum(cached_tokens), 0),
  sum(CASE WHEN cached_tokens IS NOT NULL THEN prompt_tokens ELSE 0 END), count(cached_tokens), '[]', '[]'
FROM events WHERE type = {PATCH_ATTEMPT}
GROUP BY 1, 2, 3
"""

BINS = """
SELECT {bucket}, mode, model, {bin}, count(*) FROM events
WHERE type = {attempt} AND {col} IS NOT NULL GROUP BY 1, 2, 3, 4
"""


def _encode(bins: dict[int, int]) -> str:
    """[zero-bin samples, first bin, samples of each bin from first to last]."""
    zero = bins.pop(ZERO_BIN, 0)
    if not bins:
        return f"[{zero}]" if zero else "[]"
    first = min(bins)
    dense = [0] * (max(bins) - first + 1)
    for b, n in bins.items():
        dense[b - first] = n
    return json.dumps([zero, first, *dense], separators=(",", ":"))


def _backfill_bins(bind: sa.Connection, col: str) -> None:
    per_key: dict[tuple[int, int, str], dict[int, int]] = {}
    sql = BINS.format(bucket=BUCKET, bin=_bin(col), attempt=PATCH_ATTEMPT, col=col)
    for bucket, mode, model, b, n in bind.execute(sa.text(sql)):
        per_key.setdefault((bucket, mode, model), {})[int(b)] = int(n)
    if per_key:
        bind.execute(
            sa.text(
                f"UPDATE attempt_rollups SET {col[:-3]}_bins = :bins "
                "WHERE bucket_us = :bucket AND mode = :mode AND model = :model"
            ),
            [
                {"bins": _encode(bins), "bucket": k[0], "mode": k[1], "model": k[2]}
                for k, bins in per_key.items()
            ],
        )


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


def upgrade() -> None:
    json_doc = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
    op.create_table(
        "attempt_rollups",
        sa.Column("bucket_us", sa.BigInteger(), nullable=False),
        sa.Column("mode", sa.SmallInteger(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("attempts", sa.BigInteger(), nullable=False),
        sa.Column("successes", sa.BigInteger(), nullable=False),
        sa.Column("json_valid", sa.BigInteger(), nullable=False),
        sa.Column("tokens_per_s_sum", sa.Float(), nullable=False),
        sa.Column("tokens_per_s_count", sa.BigInteger(), nullable=False),
        sa.Column("cached_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cached_prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_reported", sa.BigInteger(), nullable=False),
        sa.Column("latency_bins", json_doc, nullable=False),
        sa.Column("ttft_bins", json_doc, nullable=False),
        sa.PrimaryKeyConstraint("bucket_us", "mode", "model", name=op.f("pk_attempt_rollups")),
    )
    # An upgraded database answers from rollups at once, so they must already
    # hold every stored attempt.
    bind = op.get_bind()
    _sqlite_math(bind)
    op.execute(BACKFILL_COUNTERS)
    # The dense bin lists are built in Python from per-bin counts grouped in SQL.
    for col in ("latency_ms", "ttft_ms"):
        _backfill_bins(bind, col)


def downgrade() -> None:
    op.drop_table("attempt_rollups")
