"""Attempt rollups: what the bakeoff statistics need of PatchAttempt events,
kept up to date at ingest so a window of a million attempts is read as a few
thousand rows.

Per (hour, mode, model) the rollup holds exact counters (attempts, successes,
JSON-valid, tokens/s sum and count, cached and prompt tokens) and
log-bucketed histograms of latency_ms and ttft_ms in the DDSketch manner: a
value x > 0 falls in bin i = ceil(ln x / ln γ), i.e. (γ^(i-1), γ^i], whose
representative 2γ^i / (γ + 1) is within RELATIVE_ERROR of every value in it.
Values below MIN_VALUE_MS (0 included) share ZERO_BIN, represented by 0.

Why an hour: a bin row exists only where values fell, so one hour holds at
most a few hundred rows per (mode, model) and metric whatever the traffic;
finer buckets multiply rows without saving reads. The statistics read the
partial hours at a window's edges from the events themselves, so counts and
window boundaries stay exact.

The same bin formula exists in SQL (`bin_sql`) for those edges and for the
migration's backfill. A value exactly on a bin boundary may land on either
side depending on rounding; both bins hold it within the stated error.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

BUCKET_US = 3_600_000_000
RELATIVE_ERROR = 0.01
GAMMA = (1 + RELATIVE_ERROR) / (1 - RELATIVE_ERROR)
LN_GAMMA = math.log(GAMMA)
MIN_VALUE_MS = 0.001
ZERO_BIN = -32768

# Histogram metrics (attempt_histograms.metric).
LATENCY = 1
TTFT = 2

# What a new PatchAttempt contributes, in this order (AttemptSample).
SAMPLE_COLUMNS = (
    "time_us", "mode", "model", "success", "json_valid", "latency_ms", "ttft_ms",
    "tokens_per_s", "prompt_tokens", "cached_tokens",
)
AttemptSample = tuple[Any, ...]

COUNTER_COLUMNS = (
    "attempts", "successes", "json_valid", "tokens_per_s_sum", "tokens_per_s_count",
    "cached_tokens", "cached_prompt_tokens", "cache_reported",
)


def bucket_start(time_us: int) -> int:
    """Start of the rollup hour holding time_us (floor, also before 1970)."""
    return time_us - time_us % BUCKET_US


def bucket_sql(col: str = "time_us") -> str:
    """bucket_start() in SQL; `%` truncates toward zero there, hence the fold."""
    return f"({col} - (({col} % {BUCKET_US}) + {BUCKET_US}) % {BUCKET_US})"


def bin_of(value: float) -> int:
    """The histogram bin of a value >= 0."""
    if value < MIN_VALUE_MS:
        return ZERO_BIN
    return math.ceil(math.log(value) / LN_GAMMA)


def bin_sql(col: str) -> str:
    """bin_of() in SQL (PostgreSQL, and SQLite with its math functions)."""
    return f"(CASE WHEN {col} < {MIN_VALUE_MS!r} THEN {ZERO_BIN} ELSE CAST(ceil(ln({col}) / {LN_GAMMA!r}) AS INTEGER) END)"


def bin_value(b: int) -> float:
    """The representative value of a bin: within RELATIVE_ERROR of its members."""
    if b == ZERO_BIN:
        return 0.0
    return 2 * GAMMA**b / (GAMMA + 1)


@dataclass(frozen=True)
class RollupDeltas:
    """What one batch adds, sorted by key so concurrent writers lock rows in
    the same order (no deadlocks between upserting transactions)."""

    counters: list[tuple[Any, ...]]  # (bucket_us, mode, model, *COUNTER_COLUMNS)
    bins: list[tuple[Any, ...]]  # (bucket_us, mode, model, metric, bin, samples)


def rollup_deltas(samples: Iterable[AttemptSample]) -> RollupDeltas:
    """Aggregate newly stored attempts into counter and histogram increments."""
    counters: dict[tuple[Any, ...], list[Any]] = {}
    bins: dict[tuple[Any, ...], int] = {}
    for time_us, mode, model, success, json_valid, latency, ttft, tps, prompt, cached in samples:
        bucket = time_us - time_us % BUCKET_US
        key = (bucket, mode, model)
        c = counters.get(key)
        if c is None:
            c = counters[key] = [0, 0, 0, 0.0, 0, 0, 0, 0]
        c[0] += 1
        if success:
            c[1] += 1
        if json_valid:
            c[2] += 1
        if tps:
            c[3] += tps
            c[4] += 1
        if cached is not None:
            c[5] += cached
            c[6] += prompt
            c[7] += 1
        k = (bucket, mode, model, LATENCY, bin_of(latency))
        bins[k] = bins.get(k, 0) + 1
        if ttft is not None:
            k = (bucket, mode, model, TTFT, bin_of(ttft))
            bins[k] = bins.get(k, 0) + 1
    return RollupDeltas(
        counters=[(*k, *v) for k, v in sorted(counters.items())],
        bins=[(*k, n) for k, n in sorted(bins.items())],
    )


def histogram_percentile(bins: Sequence[tuple[int, int]], p: float) -> float | None:
    """percentile_cont at fraction p over a histogram of (bin, samples), sorted by bin.

    The ranks next to p*(n-1) are located in their bins and their
    representatives interpolated as percentile_cont interpolates values, so
    the result keeps the bins' relative error.
    """
    n = sum(c for _, c in bins)
    if n == 0:
        return None
    pos = p * (n - 1)
    lo = math.floor(pos)
    lo_v = hi_v = None
    seen = 0
    for b, c in bins:
        seen += c
        if lo_v is None and lo < seen:
            lo_v = bin_value(b)
        if lo + 1 < seen:
            hi_v = bin_value(b)
            break
    assert lo_v is not None
    if hi_v is None or pos == lo:
        return lo_v
    return lo_v + (pos - lo) * (hi_v - lo_v)
