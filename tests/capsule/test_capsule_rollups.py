"""Attempt rollups on SQLite and PostgreSQL: exact counters, histogram
percentiles within the stated relative error of exact ones, no double counting
on replay, window edges, and the migration's backfill."""

from __future__ import annotations

import asyncio
import math
import random
import statistics
from pathlib import Path

import pytest
from capsule_helpers import CLOUD, REFLEX, T0_US, attempt
from sqlalchemy import column, create_engine, insert, table, text

from speckit_reflex.capsule import migrate
from speckit_reflex.capsule.core import Capsule
from speckit_reflex.capsule.events import COLUMNS, event_to_row
from speckit_reflex.capsule.rollups import (
    RELATIVE_ERROR,
    ZERO_BIN,
    add_bins,
    bin_of,
    bin_value,
    decode_bins,
    encode_bins,
    histogram_percentile,
    rollup_increments,
)
from speckit_reflex.capsule.stats import GroupStats
from speckit_reflex.capsule.store import CapsuleStore, make_engine
from speckit_reflex.capsule.windows import TimeWindow
from speckit_reflex.policy import load_policy
from speckit_reflex.v1 import capsule_pb2

HOUR_US = 3_600_000_000
# Interpolating two representatives each within RELATIVE_ERROR stays within
# it; the slack covers float rounding at bin boundaries.
TOLERANCE = RELATIVE_ERROR * (1 + 1e-9) + 1e-12
MODELS = ((REFLEX, "qwen"), (REFLEX, "gpt-oss"), (CLOUD, "deepseek"))


def _attempts(rng: random.Random, n: int, now_us: int, span_us: int) -> list:
    """Attempts with heavy-tailed latencies, some zero, some without TTFT or cache."""
    out = []
    for i in range(n):
        mode, model = MODELS[i % len(MODELS)]
        lat = 0.0 if i % 97 == 0 else round(rng.lognormvariate(6.5, 0.9), 3)
        extra = {}
        if i % 5:
            extra["ttft_ms"] = round(rng.lognormvariate(4, 1.2), 3)
        if i % 3:
            extra["cached_tokens"] = rng.randrange(0, 900)
        out.append(
            attempt(
                mode,
                model,
                lat,
                success=rng.random() < 0.8,
                json_valid=rng.random() < 0.97,
                time_us=now_us - rng.randrange(0, span_us),
                prompt_tokens=1000,
                tokens_per_s=0.0 if i % 11 == 0 else rng.uniform(5, 60),
                **extra,
            )
        )
    return out


def _stores(url: str) -> tuple[CapsuleStore, CapsuleStore]:
    """Two stores on one database: one always exact, one always from rollups."""
    exact = CapsuleStore(make_engine(url), auto_create_schema=False, exact_percentile_limit=10**12)
    rolled = CapsuleStore(make_engine(url), auto_create_schema=False, exact_percentile_limit=0)
    return exact, rolled


def _close_to(approx: float | None, exact: float | None) -> bool:
    if exact is None or approx is None:
        return approx is exact
    return abs(approx - exact) <= TOLERANCE * abs(exact)


def _assert_same_except_percentiles(h: GroupStats, e: GroupStats) -> None:
    assert (h.total, h.successes, h.json_valid) == (e.total, e.successes, e.json_valid)
    assert (h.cached_tokens, h.cached_prompt_tokens, h.cache_reported) == (
        e.cached_tokens,
        e.cached_prompt_tokens,
        e.cache_reported,
    )
    assert h.mean_tokens_per_s == pytest.approx(e.mean_tokens_per_s, rel=1e-9)
    assert h.percentile_method == "histogram" and e.percentile_method == "exact"
    for name in ("p50_latency_ms", "p95_latency_ms", "p50_ttft_ms", "p95_ttft_ms"):
        assert _close_to(getattr(h, name), getattr(e, name)), (
            name,
            getattr(h, name),
            getattr(e, name),
        )


def _compare(exact_store: CapsuleStore, rolled_store: CapsuleStore, window: TimeWindow) -> int:
    e, h = exact_store.attempt_stats(window), rolled_store.attempt_stats(window)
    assert set(h.by_mode) == set(e.by_mode) and set(h.by_model) == set(e.by_model)
    for key, g in e.by_mode.items():
        _assert_same_except_percentiles(h.by_mode[key], g)
    for key, g in e.by_model.items():
        _assert_same_except_percentiles(h.by_model[key], g)
    return sum(g.total for g in e.by_mode.values())


def _append(store: CapsuleStore, events: list) -> int:
    return store.append_events([event_to_row(ev, i, "none", T0_US) for i, ev in enumerate(events)])


@pytest.mark.parametrize("seed", [1, 2])
def test_histogram_stats_match_exact_within_relative_error(migrated_url: str, seed: int):
    rng = random.Random(seed)
    exact, rolled = _stores(migrated_url)
    try:
        events = _attempts(rng, 3000, T0_US, 30 * HOUR_US)
        for i in range(0, len(events), 500):
            assert _append(rolled, events[i : i + 500]) == len(events[i : i + 500])
        # Windows with edges inside hours, on hour boundaries, and one inside a single hour.
        start_off = rng.randrange(1, HOUR_US)
        windows = [
            TimeWindow(T0_US - 24 * HOUR_US + 1, T0_US + 1, "24h"),
            TimeWindow(
                T0_US - 7 * HOUR_US - start_off, T0_US - 2 * HOUR_US + start_off // 3, "custom"
            ),
            TimeWindow(
                (T0_US // HOUR_US - 20) * HOUR_US, (T0_US // HOUR_US - 3) * HOUR_US, "custom"
            ),
            TimeWindow(T0_US - HOUR_US // 2, T0_US - HOUR_US // 4, "custom"),
            TimeWindow(T0_US - 40 * HOUR_US, T0_US + HOUR_US, "custom"),
        ]
        seen = [_compare(exact, rolled, w) for w in windows]
        assert seen[-1] == 3000 and all(s > 0 for s in seen)
    finally:
        exact.close()
        rolled.close()


def test_replays_are_not_counted_twice(migrated_url: str):
    store = CapsuleStore(
        make_engine(migrated_url), auto_create_schema=False, exact_percentile_limit=0
    )
    try:
        events = _attempts(random.Random(3), 300, T0_US, 5 * HOUR_US)
        assert _append(store, events[:200]) == 200
        # A replay mixed with new ids, and an id repeated inside one batch.
        assert _append(store, [*events[100:300], events[250], events[0]]) == 100
        assert _append(store, events) == 0
        with store.engine.connect() as conn:
            rolled = conn.execute(
                text("SELECT sum(attempts), sum(successes) FROM attempt_rollups")
            ).one()
            raw = conn.execute(
                text(
                    "SELECT count(*), sum(CASE WHEN success THEN 1 ELSE 0 END) FROM events WHERE type = 3"
                )
            ).one()
            bins = conn.execute(text("SELECT latency_bins, ttft_bins FROM attempt_rollups")).all()
        assert tuple(rolled) == tuple(raw) == (300, sum(e.success for e in events))
        latency: dict[int, int] = {}
        ttft: dict[int, int] = {}
        for lat_bins, ttft_bins in bins:
            add_bins(latency, decode_bins(lat_bins))
            add_bins(ttft, decode_bins(ttft_bins))
        assert sum(latency.values()) == 300 and sum(ttft.values()) == sum(
            e.HasField("ttft_ms") for e in events
        )
        stats = store.attempt_stats(TimeWindow(T0_US - 10 * HOUR_US, T0_US + 1, "custom"))
        assert stats.by_mode[REFLEX].total == 200 and stats.by_mode[CLOUD].total == 100
    finally:
        store.close()


def test_upgrade_backfills_rollups_from_stored_events(db_url: str):
    """Events stored under revision 0001 are in the rollups after `upgrade`."""
    engine = create_engine(db_url)
    migrate.upgrade(engine, "0001")
    events = _attempts(random.Random(4), 1200, T0_US, 26 * HOUR_US)
    rows = [
        dict(zip(COLUMNS, event_to_row(ev, i, "none", T0_US), strict=True))
        for i, ev in enumerate(events)
    ]
    # The events table as revision 0001 made it (later revisions added columns).
    at_0001 = table("events", *(column(c) for c in COLUMNS if c not in ("trace_id", "span_id")))
    with engine.begin() as conn:
        conn.execute(
            insert(at_0001), [{c.name: row[c.name] for c in at_0001.columns} for row in rows]
        )
    migrate.upgrade(engine)
    engine.dispose()
    exact, rolled = _stores(db_url)
    try:
        assert (
            _compare(exact, rolled, TimeWindow(T0_US - 48 * HOUR_US, T0_US + 1, "custom")) == 1200
        )
        assert (
            _compare(exact, rolled, TimeWindow(T0_US - 9 * HOUR_US - 17, T0_US - 123_456, "custom"))
            > 0
        )
    finally:
        exact.close()
        rolled.close()


async def test_reply_says_which_percentiles(migrated_url: str, tmp_path: Path):
    policy = load_policy(None).policy
    store = CapsuleStore(
        make_engine(migrated_url), auto_create_schema=False, exact_percentile_limit=3
    )
    core = Capsule(store, policy, tmp_path, clock_us=lambda: T0_US)
    try:
        req = capsule_pb2.AppendEventsRequest(
            events=[attempt(REFLEX, "m", 100.0 + i, time_us=T0_US - i) for i in range(3)]
        )
        await core.append_events(req)
        stats_req = capsule_pb2.GetBakeoffStatsRequest(window=capsule_pb2.Window(since="1h"))
        few = await core.bakeoff_stats(stats_req)
        assert few.reflex.percentile_method == "exact" and few.reflex.p50_latency_ms == 101.0
        assert few.cloud.percentile_method == ""  # no attempts, no method
        req = capsule_pb2.AppendEventsRequest(
            events=[attempt(REFLEX, "m", 200.0, time_us=T0_US - 5, bakeoff_run_id="run-1")]
        )
        await core.append_events(req)
        many = await core.bakeoff_stats(stats_req)
        assert many.reflex.percentile_method == "histogram" and many.reflex.total_attempts == 4
        assert many.models[0].stats.percentile_method == "histogram"
        assert _close_to(many.reflex.p50_latency_ms, 101.5)
        # One bakeoff run's attempts are always ranked exactly.
        run = await core.bakeoff_stats(
            capsule_pb2.GetBakeoffStatsRequest(
                window=capsule_pb2.Window(since="1h"), bakeoff_run_id="run-1"
            )
        )
        assert run.reflex.total_attempts == 1 and run.reflex.percentile_method == "exact"
        assert run.reflex.p50_latency_ms == 200.0
    finally:
        await core.close()


def test_bins_hold_values_within_the_relative_error():
    rng = random.Random(5)
    for _ in range(20_000):
        x = math.exp(rng.uniform(math.log(1e-3), math.log(1e7)))
        assert abs(bin_value(bin_of(x)) - x) <= TOLERANCE * x
    assert bin_value(bin_of(0.0)) == 0.0


def test_histogram_percentile_follows_percentile_cont():
    rng = random.Random(6)
    values = [rng.lognormvariate(5, 1) for _ in range(5001)]
    bins: dict[int, int] = {}
    for v in values:
        bins[bin_of(v)] = bins.get(bin_of(v), 0) + 1
    ordered = sorted(bins.items())
    for p, cut in (
        (0.5, statistics.median(values)),
        (0.95, statistics.quantiles(values, n=100, method="inclusive")[94]),
    ):
        assert _close_to(histogram_percentile(ordered, p), cut)
    assert histogram_percentile([], 0.5) is None
    assert histogram_percentile([(bin_of(42.0), 1)], 0.95) == bin_value(bin_of(42.0))


def test_rollup_increments_count_each_sample_once():
    samples = [
        (
            T0_US + i,
            REFLEX,
            "m",
            i % 2 == 0,
            True,
            10.0 * (i + 1),
            None if i % 2 else 5.0,
            0.0,
            100,
            None,
        )
        for i in range(4)
    ] + [
        (T0_US - HOUR_US, CLOUD, "c", True, False, 0.0, None, 30.0, 100, 60),
        (T0_US - HOUR_US, CLOUD, "c", False, None, 0.0, None, 0.0, 0, None),
    ]
    incs = rollup_increments(samples)
    hour = T0_US - T0_US % HOUR_US
    # The last counter is replies: the sample without json_valid (a failed call) got none.
    assert [(i.key, i.counters) for i in incs] == [
        ((hour - HOUR_US, CLOUD, "c"), [2, 1, 0, 30.0, 1, 60, 100, 1, 1]),
        ((hour, REFLEX, "m"), [4, 2, 4, 0.0, 0, 0, 0, 0, 4]),
    ]
    assert incs[1].latency_bins == {bin_of(10.0 * (i + 1)): 1 for i in range(4)}
    assert incs[1].ttft_bins == {bin_of(5.0): 2}
    assert incs[0].latency_bins == {bin_of(0.0): 2} and incs[0].ttft_bins == {}
    merged = decode_bins(encode_bins(incs[1].latency_bins))
    assert merged == incs[1].latency_bins
    add_bins(merged, incs[1].latency_bins)
    assert merged == {b: 2 for b in incs[1].latency_bins}
    with_zero = {ZERO_BIN: 3, -2: 1, 4: 5}
    assert (
        encode_bins(with_zero) == "[3,-2,1,0,0,0,0,0,5]"
        and decode_bins(encode_bins(with_zero)) == with_zero
    )
    assert decode_bins(encode_bins({ZERO_BIN: 2})) == {ZERO_BIN: 2} and encode_bins({}) == "[]"


async def test_concurrent_appends_keep_rollups_exact(capsule, migrated_url: str):
    """Batches appended at once through the service, all touching the same
    hours and models (and replaying each other's ids), leave rollups that
    agree with the events: no lost update, no double count, no deadlock."""
    rng = random.Random(8)
    events = _attempts(rng, 2400, T0_US, 3 * HOUR_US)
    batches = [events[i::6] for i in range(6)]
    batches += [batches[0][:50] + batches[1][:50]]  # a replay racing the originals
    replies = await asyncio.gather(*(capsule.append_events(b) for b in batches))
    assert sum(r.inserted for r in replies) == 2400
    assert sum(r.duplicates for r in replies) == 100
    exact, rolled = _stores(migrated_url)
    try:
        assert _compare(exact, rolled, TimeWindow(T0_US - 4 * HOUR_US, T0_US + 1, "custom")) == 2400
    finally:
        exact.close()
        rolled.close()


def test_latency_chart_from_rollups_matches_exact_buckets(migrated_url: str):
    # Latencies kept at least 2 % away from every bucket edge, so no value's
    # bin straddles one: the counts must then be equal, not just close.
    from speckit_reflex.capsule.stats import LATENCY_BUCKETS_MS

    rng = random.Random(7)
    edges = (0, *LATENCY_BUCKETS_MS)
    exact, rolled = _stores(migrated_url)
    try:
        events = []
        for ev in _attempts(rng, 2000, T0_US, 30 * HOUR_US):
            while any(abs(ev.latency_ms - e) <= 0.02 * e for e in edges[1:]):
                ev.latency_ms = round(rng.lognormvariate(6.5, 1.1), 3)
            events.append(ev)
        _append(rolled, events)
        for window in (
            TimeWindow(T0_US - 24 * HOUR_US + 1, T0_US + 1, "24h"),
            TimeWindow(T0_US - 7 * HOUR_US - 12345, T0_US - 2 * HOUR_US + 999, "custom"),
        ):
            want, got = exact.latency_histogram(window), rolled.latency_histogram(window)
            assert got == want and sum(map(sum, want.values())) > 0, (got, want)
        assert (
            sum(
                sum(v)
                for v in rolled.latency_histogram(
                    TimeWindow(T0_US - 40 * HOUR_US, T0_US + HOUR_US, "custom")
                ).values()
            )
            == 2000
        )
    finally:
        exact.close()
        rolled.close()
