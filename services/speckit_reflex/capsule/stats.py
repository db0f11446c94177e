"""Bakeoff statistics in SQL: per mode and per (mode, model), over PatchAttempt
events in a window.

PostgreSQL computes everything, percentiles included (`percentile_cont`), in
one statement with GROUPING SETS over the covering partial index. SQLite has
no percentile aggregate, so it ranks values with window functions and returns
only the rows around each percentile's position; Python then interpolates
between those two neighbours exactly as `percentile_cont` does.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, text

from speckit_reflex.capsule.rollups import (
    BUCKET_US,
    COUNTER_COLUMNS,
    LATENCY,
    TTFT,
    add_bins,
    bin_sql,
    bin_value,
    decode_bins,
    histogram_percentile,
)
from speckit_reflex.capsule.schema import PATCH_ATTEMPT
from speckit_reflex.capsule.windows import TimeWindow

PERCENTILES = (0.5, 0.95)
# Above this many attempts in a window, percentiles come from the rollups'
# histograms: exact percentiles of a million values cost seconds of sorting.
EXACT_PERCENTILE_LIMIT = 50_000
EXACT, HISTOGRAM = "exact", "histogram"
# Upper bounds (ms) of the latency histogram's buckets; the last is open.
LATENCY_BUCKETS_MS = (100, 250, 500, 1000, 2000, 5000, 10000)


@dataclass
class GroupStats:
    """Statistics of one group: a mode (model is None) or a (mode, model)."""

    mode: int
    model: str | None
    total: int = 0
    successes: int = 0
    json_valid: int = 0
    # Attempts whose model call returned a reply; the rest were errors.
    replies: int = 0
    p50_latency_ms: float | None = None
    p95_latency_ms: float | None = None
    p50_ttft_ms: float | None = None
    p95_ttft_ms: float | None = None
    mean_tokens_per_s: float | None = None
    cached_tokens: int = 0
    cached_prompt_tokens: int = 0
    cache_reported: int = 0
    # How p50/p95 were computed: EXACT (percentile_cont) or HISTOGRAM.
    percentile_method: str = EXACT

    @property
    def success_rate(self) -> float | None:
        return 100.0 * self.successes / self.total if self.total else None

    @property
    def errors(self) -> int:
        return self.total - self.replies

    @property
    def json_compliance_rate(self) -> float | None:
        """Schema-valid replies over replies received: an error is not a schema failure."""
        return 100.0 * self.json_valid / self.replies if self.replies else None

    @property
    def availability_percent(self) -> float | None:
        return 100.0 * self.replies / self.total if self.total else None

    @property
    def cache_hit_rate(self) -> float | None:
        """cached / prompt tokens (0-1) over attempts that reported cached tokens."""
        if not self.cache_reported or not self.cached_prompt_tokens:
            return None
        return self.cached_tokens / self.cached_prompt_tokens


@dataclass
class AttemptStats:
    """Every group of one window."""

    by_mode: dict[int, GroupStats] = field(default_factory=dict)
    by_model: dict[tuple[int, str], GroupStats] = field(default_factory=dict)


def _filters(window: TimeWindow, bakeoff_run_id: str) -> tuple[str, dict[str, Any]]:
    where = f"type = {PATCH_ATTEMPT} AND time_us >= :start AND time_us < :end"
    params: dict[str, Any] = {"start": window.start_us, "end": window.end_us}
    if bakeoff_run_id:
        where += " AND bakeoff_run_id = :run"
        params["run"] = bakeoff_run_id
    return where, params


def _group(stats: AttemptStats, mode: int, model: str | None) -> GroupStats:
    if model is None:
        return stats.by_mode.setdefault(mode, GroupStats(mode, None))
    return stats.by_model.setdefault((mode, model), GroupStats(mode, model))


def attempt_stats(
    conn: Connection,
    window: TimeWindow,
    bakeoff_run_id: str = "",
    exact_limit: int = EXACT_PERCENTILE_LIMIT,
) -> AttemptStats:
    """Per-mode and per-(mode, model) statistics of PatchAttempt events.

    Counts, rates and means are always exact. Percentiles are exact while the
    window holds at most `exact_limit` attempts (and for one bakeoff run's
    attempts, which the rollups do not separate); above that they come from
    the rollups' histograms, within rollups.RELATIVE_ERROR of exact.
    """
    counters = _counters_if_over(conn, window, bakeoff_run_id, exact_limit)
    if counters is not None:
        return _histogram_stats(conn, window, counters)
    if conn.dialect.name == "postgresql":
        return _postgres_stats(conn, window, bakeoff_run_id)
    return _portable_stats(conn, window, bakeoff_run_id)


# -- from rollups ---------------------------------------------------------------


def _split(window: TimeWindow) -> dict[str, int]:
    """The window's whole rollup hours [full_start, full_end) and its bounds;
    the partial hours at either edge are read from the events."""
    full_start = -(-window.start_us // BUCKET_US) * BUCKET_US
    full_end = window.end_us // BUCKET_US * BUCKET_US
    if full_start >= full_end:  # no whole hour: everything is edge
        full_start = full_end = window.end_us
    return {
        "start": window.start_us,
        "end": window.end_us,
        "full_start": full_start,
        "full_end": full_end,
    }


# PatchAttempts of the partial hours at both edges: two plain range
# conditions, each a scan of the covering partial index.
_EDGE_COLUMNS = "mode, model, success, json_valid, latency_ms, ttft_ms, tokens_per_s, prompt_tokens, cached_tokens"
_EDGE_EVENTS = (
    f"(SELECT {_EDGE_COLUMNS} FROM events WHERE type = {PATCH_ATTEMPT} AND time_us >= :start AND time_us < :full_start "
    f"UNION ALL SELECT {_EDGE_COLUMNS} FROM events "
    f"WHERE type = {PATCH_ATTEMPT} AND time_us >= :full_end AND time_us < :end) edge"
)

_ROLLUP_COUNTERS = f"""
SELECT mode, model, sum(attempts), sum(successes), sum(json_valid), sum(tokens_per_s_sum),
       sum(tokens_per_s_count), sum(cached_tokens), sum(cached_prompt_tokens), sum(cache_reported), sum(replies)
FROM (
  SELECT mode, model, {", ".join(COUNTER_COLUMNS)}
  FROM attempt_rollups WHERE bucket_us >= :full_start AND bucket_us < :full_end
  UNION ALL
  SELECT mode, model, count(*),
         sum(CASE WHEN success THEN 1 ELSE 0 END), sum(CASE WHEN json_valid THEN 1 ELSE 0 END),
         coalesce(sum(CASE WHEN tokens_per_s <> 0 THEN tokens_per_s END), 0),
         sum(CASE WHEN tokens_per_s <> 0 THEN 1 ELSE 0 END), coalesce(sum(cached_tokens), 0),
         sum(CASE WHEN cached_tokens IS NOT NULL THEN prompt_tokens ELSE 0 END), count(cached_tokens),
         count(json_valid)
  FROM {_EDGE_EVENTS}
  GROUP BY mode, model
) parts
GROUP BY mode, model
"""

_ROLLUP_BINS = """
SELECT mode, model, latency_bins, ttft_bins
FROM attempt_rollups WHERE bucket_us >= :full_start AND bucket_us < :full_end
"""

_EDGE_BINS = f"""
SELECT mode, model, {LATENCY}, {bin_sql("latency_ms")}, count(*) FROM {_EDGE_EVENTS} GROUP BY 1, 2, 3, 4
UNION ALL
SELECT mode, model, {TTFT}, {bin_sql("ttft_ms")}, count(*) FROM {_EDGE_EVENTS}
WHERE ttft_ms IS NOT NULL GROUP BY 1, 2, 3, 4
"""


def _counters_if_over(
    conn: Connection, window: TimeWindow, bakeoff_run_id: str, exact_limit: int
) -> dict[tuple[int, str], list[Any]] | None:
    """The rollup counters when the window is read from the rollups: more than
    `exact_limit` attempts and not one bakeoff run's (the rollups do not
    separate runs). None means: count from the events, exactly."""
    if bakeoff_run_id:
        return None
    counters = _rollup_counters(conn, window)
    return counters if sum(c[0] for c in counters.values()) > exact_limit else None


def _rollup_counters(conn: Connection, window: TimeWindow) -> dict[tuple[int, str], list[Any]]:
    """Exact counters per (mode, model): whole hours from rollups, edges from events."""
    rows = conn.execute(text(_ROLLUP_COUNTERS), _split(window))
    return {
        (r[0], r[1]): [int(v) if i != 3 else float(v) for i, v in enumerate(r[2:])] for r in rows
    }


def _from_counters(g: GroupStats, c: list[Any]) -> None:
    attempts, successes, json_valid, tps_sum, tps_n, cached, cached_prompt, reported, replies = c
    g.total, g.successes, g.json_valid, g.replies = attempts, successes, json_valid, replies
    g.mean_tokens_per_s = tps_sum / tps_n if tps_n else None
    g.cached_tokens, g.cached_prompt_tokens, g.cache_reported = cached, cached_prompt, reported


def _window_bins(
    conn: Connection, window: TimeWindow
) -> dict[tuple[int, str | None, int], dict[int, int]]:
    """Histogram bins per (mode, model, metric) and per (mode, None, metric):
    whole hours from the rollups, the partial hours at the edges from events."""
    bins: dict[tuple[int, str | None, int], dict[int, int]] = {}
    params = _split(window)
    for mode, model, latency_bins, ttft_bins in conn.execute(text(_ROLLUP_BINS), params):
        for metric, doc in ((LATENCY, latency_bins), (TTFT, ttft_bins)):
            hist = decode_bins(doc)
            add_bins(bins.setdefault((mode, model, metric), {}), hist)
            add_bins(bins.setdefault((mode, None, metric), {}), hist)
    for mode, model, metric, b, n in conn.execute(text(_EDGE_BINS), params):
        for key in ((mode, model, metric), (mode, None, metric)):
            per_bin = bins.setdefault(key, {})
            per_bin[b] = per_bin.get(b, 0) + int(n)
    return bins


def _histogram_stats(
    conn: Connection, window: TimeWindow, counters: dict[tuple[int, str], list[Any]]
) -> AttemptStats:
    out = AttemptStats()
    per_mode: dict[int, list[Any]] = {}
    for (mode, model), c in counters.items():
        _from_counters(_group(out, mode, model), c)
        per_mode[mode] = [a + b for a, b in zip(per_mode.get(mode, [0] * len(c)), c, strict=True)]
    for mode, c in per_mode.items():
        _from_counters(_group(out, mode, None), c)
    for (mode, bin_model, metric), per_bin in _window_bins(conn, window).items():
        if not per_bin:  # an hour whose attempts reported no TTFT
            continue
        g = _group(out, mode, bin_model)
        ordered = sorted(per_bin.items())
        p50, p95 = (histogram_percentile(ordered, p) for p in PERCENTILES)
        if metric == LATENCY:
            g.p50_latency_ms, g.p95_latency_ms = p50, p95
        else:
            g.p50_ttft_ms, g.p95_ttft_ms = p50, p95
    for g in (*out.by_mode.values(), *out.by_model.values()):
        g.percentile_method = HISTOGRAM
    return out


_PG_STATS = """
SELECT mode, model, GROUPING(model) AS per_mode,
       count(*) AS total,
       count(*) FILTER (WHERE success) AS successes,
       count(*) FILTER (WHERE json_valid) AS json_valid,
       count(json_valid) AS replies,
       percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY latency_ms) AS latency,
       percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY ttft_ms) AS ttft,
       avg(NULLIF(tokens_per_s, 0)) AS tps,
       sum(cached_tokens) AS cached,
       sum(prompt_tokens) FILTER (WHERE cached_tokens IS NOT NULL) AS cached_prompt,
       count(cached_tokens) AS cache_reported
FROM events
WHERE {where}
GROUP BY GROUPING SETS ((mode), (mode, model))
"""


def _postgres_stats(conn: Connection, window: TimeWindow, run: str) -> AttemptStats:
    where, params = _filters(window, run)
    # Sorting a million latencies needs more than the default 4 MB of
    # work_mem to stay in memory; SET LOCAL ends with the transaction.
    conn.execute(text("SET LOCAL work_mem = '256MB'"))
    # JIT compilation costs tens of ms and buys nothing for one aggregate pass.
    conn.execute(text("SET LOCAL jit = off"))
    out = AttemptStats()
    for r in conn.execute(text(_PG_STATS.format(where=where)), params).mappings():
        g = _group(out, r["mode"], None if r["per_mode"] else r["model"])
        g.total, g.successes, g.json_valid, g.replies = (
            r["total"],
            r["successes"],
            r["json_valid"],
            r["replies"],
        )
        g.p50_latency_ms, g.p95_latency_ms = r["latency"]
        if r["ttft"] is not None and r["ttft"][0] is not None:
            g.p50_ttft_ms, g.p95_ttft_ms = r["ttft"]
        g.mean_tokens_per_s = None if r["tps"] is None else float(r["tps"])
        g.cached_tokens = int(r["cached"] or 0)
        g.cached_prompt_tokens = int(r["cached_prompt"] or 0)
        g.cache_reported = r["cache_reported"]
    return out


_PORTABLE_COUNTS = """
SELECT mode, {model} AS model,
       count(*) AS total,
       sum(CASE WHEN success THEN 1 ELSE 0 END) AS successes,
       sum(CASE WHEN json_valid THEN 1 ELSE 0 END) AS json_valid,
       count(json_valid) AS replies,
       avg(NULLIF(tokens_per_s, 0)) AS tps,
       sum(cached_tokens) AS cached,
       sum(CASE WHEN cached_tokens IS NOT NULL THEN prompt_tokens ELSE 0 END) AS cached_prompt,
       count(cached_tokens) AS cache_reported
FROM events
WHERE {where}
GROUP BY mode{group_model}
"""

# Rank the metric inside each group and keep the rows next to each
# percentile's position p*(n-1): floor and floor+1 for p in 0.5 and 0.95.
_PORTABLE_PERCENTILES = """
SELECT mode, model, v, rn, n FROM (
  SELECT mode, {model} AS model, {col} AS v,
         row_number() OVER (PARTITION BY {part} ORDER BY {col}) - 1 AS rn,
         count(*) OVER (PARTITION BY {part}) AS n
  FROM events
  WHERE {where} AND {col} IS NOT NULL
) ranked
WHERE rn IN (CAST((n - 1) * 0.5 AS INTEGER), CAST((n - 1) * 0.5 AS INTEGER) + 1,
             CAST((n - 1) * 0.95 AS INTEGER), CAST((n - 1) * 0.95 AS INTEGER) + 1)
"""


def interpolate(values_by_rank: dict[int, float], n: int, p: float) -> float:
    """percentile_cont's value at fraction p from the ranked neighbours."""
    pos = p * (n - 1)
    lo = math.floor(pos)
    lo_v = values_by_rank[lo]
    if pos == lo:
        return lo_v
    return lo_v + (pos - lo) * (values_by_rank[lo + 1] - lo_v)


def _portable_stats(conn: Connection, window: TimeWindow, run: str) -> AttemptStats:
    where, params = _filters(window, run)
    out = AttemptStats()
    for per_mode in (True, False):
        model_expr = "NULL" if per_mode else "model"
        sql = _PORTABLE_COUNTS.format(
            model=model_expr, where=where, group_model="" if per_mode else ", model"
        )
        for r in conn.execute(text(sql), params).mappings():
            g = _group(out, r["mode"], r["model"])
            g.total, g.successes, g.json_valid = (
                r["total"],
                int(r["successes"]),
                int(r["json_valid"]),
            )
            g.replies = int(r["replies"])
            g.mean_tokens_per_s = None if r["tps"] is None else float(r["tps"])
            g.cached_tokens, g.cached_prompt_tokens = (
                int(r["cached"] or 0),
                int(r["cached_prompt"] or 0),
            )
            g.cache_reported = r["cache_reported"]
        part = "mode" if per_mode else "mode, model"
        for col in ("latency_ms", "ttft_ms"):
            sql = _PORTABLE_PERCENTILES.format(model=model_expr, col=col, part=part, where=where)
            ranked: dict[tuple[int, str | None], tuple[int, dict[int, float]]] = {}
            for r in conn.execute(text(sql), params).mappings():
                n, values = ranked.setdefault((r["mode"], r["model"]), (r["n"], {}))
                values[r["rn"]] = float(r["v"])
            for (mode, model), (n, values) in ranked.items():
                p50, p95 = (interpolate(values, n, p) for p in PERCENTILES)
                g = _group(out, mode, model)
                if col == "latency_ms":
                    g.p50_latency_ms, g.p95_latency_ms = p50, p95
                else:
                    g.p50_ttft_ms, g.p95_ttft_ms = p50, p95
    return out


def latency_histogram(
    conn: Connection,
    window: TimeWindow,
    bakeoff_run_id: str = "",
    exact_limit: int = EXACT_PERCENTILE_LIMIT,
) -> dict[int, list[int]]:
    """Attempt counts per mode in each latency bucket (LATENCY_BUCKETS_MS, then open).

    Counted from the events while the window holds at most `exact_limit`
    attempts (and for one bakeoff run); above that from the rollups' bins,
    each counted in the bucket of its representative value, so only
    attempts within RELATIVE_ERROR of a bucket edge may land one bucket over.
    """
    if _counters_if_over(conn, window, bakeoff_run_id, exact_limit) is not None:
        return _histogram_buckets(conn, window)
    where, params = _filters(window, bakeoff_run_id)
    cases = " ".join(f"WHEN latency_ms < {b} THEN {i}" for i, b in enumerate(LATENCY_BUCKETS_MS))
    sql = (
        f"SELECT mode, CASE {cases} ELSE {len(LATENCY_BUCKETS_MS)} END AS bucket, count(*) AS n "
        f"FROM events WHERE {where} GROUP BY mode, bucket"
    )
    out: dict[int, list[int]] = {}
    for r in conn.execute(text(sql), params).mappings():
        out.setdefault(r["mode"], [0] * (len(LATENCY_BUCKETS_MS) + 1))[r["bucket"]] = r["n"]
    return out


def _histogram_buckets(conn: Connection, window: TimeWindow) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for (mode, model, metric), per_bin in _window_bins(conn, window).items():
        if model is not None or metric != LATENCY:
            continue
        counts = out.setdefault(mode, [0] * (len(LATENCY_BUCKETS_MS) + 1))
        for b, n in per_bin.items():
            counts[bisect.bisect_right(LATENCY_BUCKETS_MS, bin_value(b))] += n
    return out
