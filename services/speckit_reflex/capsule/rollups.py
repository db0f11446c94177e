"""Attempt rollups: what the bakeoff statistics need of PatchAttempt events,
kept up to date at ingest so a window of a million attempts is read as a few
thousand rows.

Per (hour, mode, model) the rollup holds exact counters (attempts, successes,
JSON-valid, tokens/s sum and count, cached and prompt tokens) and
log-bucketed histograms of latency_ms and ttft_ms in the DDSketch manner: a
value x > 0 falls in bin i = ceil(ln x / ln γ), i.e. (γ^(i-1), γ^i], whose
representative 2γ^i / (γ + 1) is within RELATIVE_ERROR of every value in it.
Values below MIN_VALUE_MS (0 included) share ZERO_BIN, represented by 0.

Each histogram is a dense JSON list in the key's one row (encode_bins), so a
batch writes one row per (hour, mode, model) it touches, however widely its
values spread (a row per bin would mean about one upsert per event), and a
window is read as hours x models rows. Histograms are merged in Python under
the rows' locks: merging string-keyed JSON maps in SQL (jsonb_each, group,
jsonb_object_agg) cost about 1 ms a row. Why an hour: finer buckets multiply
rows without saving reads. The statistics read the partial hours at a
window's edges from the events themselves, so counts and window boundaries
stay exact.

The same bin formula exists in SQL (`bin_sql`) for those edges and for the
migration's backfill. A value exactly on a bin boundary may land on either
side depending on rounding; both bins hold it within the stated error.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

BUCKET_US = 3_600_000_000
RELATIVE_ERROR = 0.01
GAMMA = (1 + RELATIVE_ERROR) / (1 - RELATIVE_ERROR)
LN_GAMMA = math.log(GAMMA)
MIN_VALUE_MS = 0.001
ZERO_BIN = -32768

# Histogram metrics (edge bins computed in SQL are tagged with these).
LATENCY = 1
TTFT = 2

# What a new PatchAttempt contributes, in this order (AttemptSample).
SAMPLE_COLUMNS = (
    "time_us",
    "mode",
    "model",
    "success",
    "json_valid",
    "latency_ms",
    "ttft_ms",
    "tokens_per_s",
    "prompt_tokens",
    "cached_tokens",
)
AttemptSample = tuple[Any, ...]

COUNTER_COLUMNS = (
    "attempts",
    "successes",
    "json_valid",
    "tokens_per_s_sum",
    "tokens_per_s_count",
    "cached_tokens",
    "cached_prompt_tokens",
    "cache_reported",
    "replies",
)


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


@dataclass
class RollupIncrement:
    """What one batch adds to one (hour, mode, model) rollup."""

    bucket_us: int
    mode: int
    model: str
    counters: list[Any]  # COUNTER_COLUMNS order
    latency_bins: dict[int, int] = field(default_factory=dict)
    ttft_bins: dict[int, int] = field(default_factory=dict)

    @property
    def key(self) -> tuple[int, int, str]:
        return (self.bucket_us, self.mode, self.model)


def rollup_increments(samples: Iterable[AttemptSample]) -> list[RollupIncrement]:
    """Aggregate newly stored attempts into increments, sorted by key so
    concurrent writers lock rollup rows in the same order."""
    acc: dict[tuple[int, int, str], RollupIncrement] = {}
    log, ceil, ln_gamma = math.log, math.ceil, LN_GAMMA  # bound once: this runs per attempt
    for time_us, mode, model, success, json_valid, latency, ttft, tps, prompt, cached in samples:
        key = (
            time_us - time_us % BUCKET_US,
            mode,
            model,
        )  # Python's % floors: right before 1970 too
        inc = acc.get(key)
        if inc is None:
            inc = acc[key] = RollupIncrement(*key, [0, 0, 0, 0.0, 0, 0, 0, 0, 0])
        c = inc.counters
        c[0] += 1
        if success:
            c[1] += 1
        if json_valid is not None:  # None: the call failed, no reply to judge
            c[8] += 1
            if json_valid:
                c[2] += 1
        if tps:
            c[3] += tps
            c[4] += 1
        if cached is not None:
            c[5] += cached
            c[6] += prompt
            c[7] += 1
        b = ceil(log(latency) / ln_gamma) if latency >= MIN_VALUE_MS else ZERO_BIN
        inc.latency_bins[b] = inc.latency_bins.get(b, 0) + 1
        if ttft is not None:
            b = ceil(log(ttft) / ln_gamma) if ttft >= MIN_VALUE_MS else ZERO_BIN
            inc.ttft_bins[b] = inc.ttft_bins.get(b, 0) + 1
    return [acc[k] for k in sorted(acc)]


def add_bins(into: dict[int, int], bins: dict[int, int]) -> None:
    """Add the samples of one {bin: samples} histogram into another."""
    for b, n in bins.items():
        into[b] = into.get(b, 0) + n


def encode_bins(bins: dict[int, int]) -> str:
    """A histogram as stored: JSON [zero-bin samples, first bin, samples of
    each bin from the first to the last]. Dense, because decoding and adding
    flat integer lists is several times cheaper than string-keyed maps, and
    the bins between a group's fastest and slowest values are mostly used.
    Bounded: finite doubles span bins -345 (MIN_VALUE_MS) to about 35,500."""
    zero = bins.get(ZERO_BIN, 0)
    used = [b for b in bins if b != ZERO_BIN]
    if not used:
        return f"[{zero}]" if zero else "[]"
    first = min(used)
    dense = [0] * (max(used) - first + 1)
    for b in used:
        dense[b - first] = bins[b]
    return json.dumps([zero, first, *dense], separators=(",", ":"))


def decode_bins(doc: str | list[int]) -> dict[int, int]:
    """The {bin: samples} histogram of a stored one (JSON text or parsed)."""
    values = json.loads(doc) if isinstance(doc, str) else doc
    out = {ZERO_BIN: values[0]} if values and values[0] else {}
    if len(values) > 1:
        first = values[1]
        out.update((first + i, n) for i, n in enumerate(values[2:]) if n)
    return out


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
