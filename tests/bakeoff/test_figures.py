"""Per-backend figures of a bakeoff run, computed from PatchLoop progress
events exactly as the runner folds them: pass@1, success, JSON compliance,
latency percentiles, TTFT, tokens/s and the cache-hit verification states."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from speckit_reflex.bakeoff import figures_by_backend, find_suite, load_suite
from speckit_reflex.bakeoff.metrics import (
    CACHE_MISSED,
    CACHE_NO_RETRIES,
    CACHE_UNKNOWN,
    CACHE_VERIFIED,
)
from speckit_reflex.bakeoff.suite import SuiteError
from speckit_reflex.bakeoff.trial import TrialResult
from speckit_reflex.cli.reflex_trials import cloud_skip_reason, plan_modes
from speckit_reflex.contract import percentile
from speckit_reflex.v1 import common_pb2, patchloop_pb2

REFLEX = common_pb2.ROUTING_MODE_REFLEX


def call_event(
    attempt: int,
    *,
    latency: float,
    valid: bool = True,
    cached: int | None = None,
    prompt: int = 400,
    ttft: float | None = 80.0,
    tps: float = 30.0,
    backend: str = "local",
    model: str = "smollm2",
) -> patchloop_pb2.RunEvent:
    ev = patchloop_pb2.RunEvent(run_id="r", attempt=attempt)
    c = ev.model_call
    c.backend, c.model, c.mode, c.schema_valid = backend, model, REFLEX, valid
    c.attempts = 1  # a reply: PatchLoop reports the generations the adapter made
    c.timing.latency_ms, c.timing.tokens_per_s = latency, tps
    if ttft is not None:
        c.timing.ttft_ms = ttft
    c.usage.prompt_tokens, c.usage.completion_tokens = prompt, 50
    if cached is not None:
        c.usage.cached_tokens = cached
    return ev


def result_event(outcome: int, attempts: int) -> patchloop_pb2.RunEvent:
    ev = patchloop_pb2.RunEvent(run_id="r")
    ev.result.outcome, ev.result.attempts, ev.result.duration_ms = outcome, attempts, 1234.0  # type: ignore[assignment]
    ev.result.fixed_by = (
        patchloop_pb2.FIX_SOURCE_REFLEX if outcome == patchloop_pb2.OUTCOME_FIXED else 0
    )  # type: ignore[assignment]
    return ev


def trial(task: str, *events: patchloop_pb2.RunEvent) -> TrialResult:
    t = TrialResult(
        trial_id=f"t-{task}",
        task_id=task,
        category="type_mismatch",
        difficulty="easy",
        mode="reflex",
    )
    for ev in events:
        t.absorb(ev)
    return t


def test_percentile_interpolates_like_percentile_cont() -> None:
    assert percentile([], 0.5) is None
    assert percentile([100.0], 0.95) == 100.0
    assert percentile([100.0, 200.0, 300.0, 400.0], 0.5) == 250.0
    assert percentile(list(map(float, range(1, 101))), 0.95) == pytest.approx(95.05)


def test_figures_per_backend_from_progress_events() -> None:
    trials = [
        # Fixed by the first patch: counts for pass@1.
        trial(
            "a", call_event(1, latency=1000, cached=0), result_event(patchloop_pb2.OUTCOME_FIXED, 1)
        ),
        # Fixed on the retry, whose prompt prefix hit the cache.
        trial(
            "b",
            call_event(1, latency=1500),
            call_event(2, latency=500, cached=300),
            result_event(patchloop_pb2.OUTCOME_FIXED, 2),
        ),
        # Gave up after an invalid reply and a valid one.
        trial(
            "c",
            call_event(1, latency=3000, valid=False),
            call_event(2, latency=700, cached=380),
            result_event(patchloop_pb2.OUTCOME_GAVE_UP, 2),
        ),
    ]
    [f] = figures_by_backend(trials)
    assert (f.mode, f.backend, f.model) == ("reflex", "local", "smollm2")
    assert (f.tasks, f.fixed, f.first_attempt_fixed, f.model_calls) == (3, 2, 1, 5)
    assert f.success_rate == pytest.approx(200 / 3)
    assert f.pass_at_1 == pytest.approx(100 / 3)
    assert f.json_compliance == 80.0
    assert f.p50_latency_ms == 1000.0
    assert f.p95_latency_ms == pytest.approx(2700.0)
    assert f.p50_ttft_ms == 80.0
    assert f.mean_tokens_per_s == 30.0
    assert f.cache.status == CACHE_VERIFIED
    assert (f.cache.retries, f.cache.retries_reporting, f.cache.retries_with_hits) == (2, 2, 2)
    assert f.cache.reuse == pytest.approx(680 / 800)
    assert not trials[2].json_valid and trials[1].json_valid
    proto = trials[1].to_proto("run-1")
    assert (proto.success, proto.attempts, proto.prompt_tokens, proto.cached_tokens) == (
        True,
        2,
        800,
        300,
    )
    assert proto.mode == REFLEX and proto.latency_ms == 1234.0 and proto.ttft_ms == 80.0


def test_cache_states_unknown_missed_and_no_retries() -> None:
    unknown = trial("u", call_event(1, latency=1), call_event(2, latency=1, cached=None))
    missed = trial("m", call_event(1, latency=1), call_event(2, latency=1, cached=0))
    single = trial("s", call_event(1, latency=1, cached=0))
    assert figures_by_backend([unknown])[0].cache.status == CACHE_UNKNOWN
    assert figures_by_backend([unknown])[0].cache.reuse is None
    assert figures_by_backend([missed])[0].cache.status == CACHE_MISSED
    assert figures_by_backend([single])[0].cache.status == CACHE_NO_RETRIES


def test_groups_split_by_backend_and_errors_are_not_json_verdicts() -> None:
    primary = trial("a", call_event(1, latency=100, backend="sglang"))
    fallback = trial("b", call_event(1, latency=200, backend="vllm"))
    broken = trial("c")
    broken.error, broken.outcome = "patchloop UNAVAILABLE: down", "error"
    figs = {f.backend: f for f in figures_by_backend([primary, fallback, broken])}
    assert set(figs) == {"sglang", "vllm", "-"}
    assert figs["-"].json_compliance is None and figs["-"].tasks == 1 and figs["-"].fixed == 0
    assert broken.to_proto("run").reason == "patchloop UNAVAILABLE: down"


def test_a_run_ended_in_error_is_an_errored_trial_not_a_refused_one() -> None:
    ended = result_event(patchloop_pb2.OUTCOME_ERROR, 1)
    ended.result.reason = "router_unavailable: UNAVAILABLE: connection refused"
    t = trial("r", ended)
    assert (t.outcome, t.error, t.success) == (
        "error",
        "router_unavailable: UNAVAILABLE: connection refused",
        False,
    )
    assert t.to_proto("run").reason == t.to_json()["reason"] == t.error
    # An outage of the bakeoff's own services is no result, never a task the model failed.
    assert t.to_proto("run").skipped == f"error: {t.error}"
    assert trial("ok", result_event(patchloop_pb2.OUTCOME_FIXED, 1)).to_proto("run").skipped == ""
    refused = result_event(patchloop_pb2.OUTCOME_REFUSED, 1)
    refused.result.reason = "budget_exhausted"
    assert (trial("p", refused).outcome, trial("p", refused).error) == ("refused", "")


def test_cloud_is_skipped_plainly_without_its_key_or_under_local_only() -> None:
    policy = {
        "governance": {"routing": {"cloud": {"api_key_env": "DEEPSEEK_API_KEY"}}, "privacy": {}}
    }
    assert cloud_skip_reason(policy, {}).startswith("DEEPSEEK_API_KEY is not set")
    assert cloud_skip_reason(policy, {"DEEPSEEK_API_KEY": "sk-x"}) == ""
    local_only = {"governance": {**policy["governance"], "privacy": {"local_only": True}}}
    assert "local_only" in cloud_skip_reason(local_only, {"DEEPSEEK_API_KEY": "sk-x"})
    assert plan_modes("both", "DEEPSEEK_API_KEY is not set") == (
        ("reflex",),
        "cloud: skipped — DEEPSEEK_API_KEY is not set",
    )
    assert plan_modes("both", "") == (("reflex", "cloud"), "")
    assert plan_modes("cloud", "X is not set") == ((), "cloud: skipped — X is not set")


def test_suite_selection_by_limit_and_category() -> None:
    suite = load_suite(find_suite("reflex_patchloop_v1"))
    assert len(suite.tasks) >= 40
    assert [t.id for t in suite.select(limit=3)] == [t.id for t in suite.tasks[:3]]
    lifetimes = suite.select(category="lifetimes")
    assert lifetimes and {t.category for t in lifetimes} == {"lifetimes"}
    assert all((t.crate_dir / "Cargo.toml").is_file() and t.fix_dir.is_dir() for t in suite.tasks)
    with pytest.raises(SuiteError, match="no category 'nope'"):
        suite.select(category="nope")
    with pytest.raises(SuiteError, match="not found"):
        find_suite("no_such_suite")


def test_a_suite_harvested_to_the_default_folder_is_found_by_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `reflex harvest` writes under .speckit/suites of the working folder; a
    # suite there runs as `--suite NAME`, and a missing one names --suite-dir.
    shipped = load_suite(find_suite("reflex_patchloop_v1"))
    mine = tmp_path / ".speckit" / "suites" / "week49"
    task = shipped.tasks[0]
    shutil.copytree(Path(str(task.crate_dir)), mine / "tasks" / task.id / "crate")
    shutil.copytree(Path(str(task.fix_dir)), mine / "tasks" / task.id / "fix")
    (mine / "manifest.toml").write_text(
        f'[suite]\nname = "week49"\nversion = 1\n\n[[task]]\nid = "{task.id}"\n'
        f'category = "{task.category}"\ndifficulty = "easy"\n'
    )
    monkeypatch.delenv("SPECKIT_SUITES_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    found = find_suite("week49")
    assert Path(str(found)) == mine
    assert [t.id for t in load_suite(found).tasks] == [task.id]
    with pytest.raises(SuiteError, match="--suite-dir"):
        find_suite("week50")
