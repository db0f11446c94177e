"""GetBakeoffStats, GetUsage and windows on SQLite and PostgreSQL (verdicts: test_capsule_verdict.py)."""

from __future__ import annotations

import random
import statistics
import time
from datetime import UTC, datetime

import grpc
import pytest
from capsule_helpers import CLOUD, REFLEX, attempt, make_event

from speckit_reflex.capsule.windows import resolve_window
from speckit_reflex.clients.capsule import window
from speckit_reflex.contract import stats_to_seed_json
from speckit_reflex.errors import InvalidArgument
from speckit_reflex.v1 import capsule_pb2, common_pb2

K = capsule_pb2.ThresholdFailureKind
HOUR_US = 3_600_000_000


def _pct(values: list[float], p: float) -> float:
    """percentile_cont, independently: statistics' inclusive quantiles."""
    if len(values) == 1:
        return values[0]
    cuts = statistics.quantiles(values, n=100 if p == 0.95 else 2, method="inclusive")
    return cuts[94] if p == 0.95 else cuts[0]


def _now_us() -> int:
    return time.time_ns() // 1000


async def test_stats_per_mode_and_model_match_independent_figures(capsule):
    rng = random.Random(7)
    now = _now_us()
    events, by_group = [], {}
    for mode, model, n in ((REFLEX, "qwen", 37), (REFLEX, "gpt-oss", 23), (CLOUD, "deepseek", 30)):
        for i in range(n):
            lat = round(rng.uniform(50, 3000), 3)
            ttft = round(rng.uniform(5, 300), 3) if i % 4 else None
            ev = attempt(
                mode,
                model,
                lat,
                success=i % 3 != 0,
                json_valid=i % 10 != 0,
                time_us=now - rng.randrange(1, 23 * HOUR_US),
                tokens_per_s=float(20 + i % 5),
                prompt_tokens=1000,
                **({"ttft_ms": ttft} if ttft is not None else {}),
                **({"cached_tokens": 800} if i % 2 else {}),
            )
            events.append(ev)
            by_group.setdefault((mode, model), []).append(ev)
    # Noise that must not count: other types, and attempts outside the window.
    events.append(
        make_event(common_pb2.EVENT_TYPE_LLM_CALL, mode=REFLEX, model="qwen", latency_ms=99999)
    )
    events.append(attempt(REFLEX, "qwen", 99999.0, time_us=now - 25 * HOUR_US))
    await capsule.append_events(events)

    stats = await capsule.bakeoff_stats(window("24h"))
    assert stats.period == "24h"

    def check(s: capsule_pb2.ModeStats, evs: list) -> None:
        lat = [e.latency_ms for e in evs]
        ttft = [e.ttft_ms for e in evs if e.HasField("ttft_ms")]
        assert s.total_attempts == len(evs)
        assert s.successes == sum(e.success for e in evs)
        assert s.success_rate == pytest.approx(100 * sum(e.success for e in evs) / len(evs))
        assert s.json_compliance_rate == pytest.approx(
            100 * sum(e.json_valid for e in evs) / len(evs)
        )
        assert s.p50_latency_ms == pytest.approx(_pct(lat, 0.5))
        assert s.p95_latency_ms == pytest.approx(_pct(lat, 0.95))
        assert s.p50_ttft_ms == pytest.approx(_pct(ttft, 0.5))
        assert s.p95_ttft_ms == pytest.approx(_pct(ttft, 0.95))
        assert s.mean_tokens_per_s == pytest.approx(statistics.fmean(e.tokens_per_s for e in evs))
        cached = [e for e in evs if e.HasField("cached_tokens")]
        assert s.cache_reported_attempts == len(cached)
        assert s.cache_hit_rate == pytest.approx(0.8)

    check(stats.reflex, by_group[(REFLEX, "qwen")] + by_group[(REFLEX, "gpt-oss")])
    check(stats.cloud, by_group[(CLOUD, "deepseek")])
    models = {(m.mode, m.model): m.stats for m in stats.models}
    assert set(models) == set(by_group)
    for key, evs in by_group.items():
        check(models[key], evs)

    seed = stats_to_seed_json(stats)
    assert seed["period"] == "24h"
    assert set(seed) >= {"period", "reflex", "cloud"}
    assert seed["reflex"]["total_attempts"] == 60
    assert seed["reflex"]["success_rate"] == round(stats.reflex.success_rate, 1)
    assert seed["reflex"]["p95_latency_ms"] == round(stats.reflex.p95_latency_ms, 1)
    assert {"json_compliance_rate", "p50_ttft_ms", "mean_tokens_per_s", "cache_hit_rate"} <= set(
        seed["cloud"]
    )


async def test_empty_window_reports_zero_attempts_not_an_error(capsule):
    stats = await capsule.bakeoff_stats(window("1h"))
    assert stats.reflex.total_attempts == 0 and stats.cloud.total_attempts == 0
    assert not stats.reflex.HasField("p95_ttft_ms") and not stats.reflex.HasField("cache_hit_rate")
    assert list(stats.models) == []


async def test_explicit_window_is_start_inclusive_end_exclusive(capsule):
    t0 = 1_780_000_000_000_000
    await capsule.append_events(
        [
            attempt(REFLEX, "m", 1.0, time_us=t0 - 1),
            attempt(REFLEX, "m", 2.0, time_us=t0),
            attempt(REFLEX, "m", 3.0, time_us=t0 + HOUR_US - 1),
            attempt(REFLEX, "m", 4.0, time_us=t0 + HOUR_US),
        ]
    )
    start, end = (datetime.fromtimestamp(t / 1e6, UTC) for t in (t0, t0 + HOUR_US))
    stats = await capsule.bakeoff_stats(window(start=start, end=end))
    assert stats.period == "custom"
    assert stats.reflex.total_attempts == 2
    assert stats.reflex.p50_latency_ms == pytest.approx(2.5)


@pytest.mark.parametrize(
    ("since", "inside"), [("1h", 1), ("24h", 2), ("7d", 3), ("30d", 4), ("90m", 1)]
)
async def test_since_windows(capsule, since, inside):
    now = _now_us()
    ages_us = [
        30 * 60_000_000,
        23 * HOUR_US,
        6 * 24 * HOUR_US,
        29 * 24 * HOUR_US,
        31 * 24 * HOUR_US,
    ]
    await capsule.append_events([attempt(REFLEX, "m", 10.0, time_us=now - a) for a in ages_us])
    assert (await capsule.bakeoff_stats(window(since))).reflex.total_attempts == inside


def test_duration_window_boundaries_are_exact():
    now = 1_780_000_000_000_000
    w = resolve_window(capsule_pb2.Window(since="1h"), now)
    assert (w.start_us, w.end_us, w.period) == (now - HOUR_US + 1, now + 1, "1h")
    assert resolve_window(None, now).period == "24h"
    for bad in ("24x", "h", "0h", "-1h"):
        with pytest.raises(InvalidArgument):
            resolve_window(capsule_pb2.Window(since=bad), now)


async def test_bad_window_is_invalid_argument(capsule):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await capsule.bakeoff_stats(window("yesterday"))
    assert (
        err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "yesterday" in err.value.details()
    )


async def test_stats_of_one_bakeoff_run(capsule):
    await capsule.append_events(
        [attempt(REFLEX, "m", 10.0, bakeoff_run_id="run-a") for _ in range(3)]
        + [attempt(REFLEX, "m", 10.0, bakeoff_run_id="run-b")]
    )
    stats = await capsule.bakeoff_stats(window("1h"), bakeoff_run_id="run-a")
    assert stats.reflex.total_attempts == 3


async def test_usage_counts_llm_calls_of_a_mode(capsule):
    now = _now_us()
    llm = common_pb2.EVENT_TYPE_LLM_CALL
    await capsule.append_events(
        [
            make_event(
                llm, mode=CLOUD, prompt_tokens=100, completion_tokens=10, time_us=now - 1000
            ),
            make_event(
                llm, mode=CLOUD, prompt_tokens=200, completion_tokens=20, time_us=now - 2000
            ),
            make_event(
                llm, mode=CLOUD, prompt_tokens=999, completion_tokens=99, time_us=now - 2 * HOUR_US
            ),
            make_event(llm, mode=REFLEX, prompt_tokens=50, completion_tokens=5, time_us=now - 1000),
            attempt(CLOUD, "c", 1.0, prompt_tokens=7777),
        ]
    )
    u = await capsule.usage(window("1h"), mode=CLOUD)
    assert (u.calls, u.prompt_tokens, u.completion_tokens) == (2, 300, 30)
    both = await capsule.usage(window("1h"))
    assert (both.calls, both.prompt_tokens) == (3, 350)
