"""CheckThresholds: verdicts from bakeoff trials, on SQLite and PostgreSQL."""

from __future__ import annotations

import time

import pytest
from capsule_helpers import CLOUD, REFLEX, attempt

from speckit_reflex.clients.capsule import window
from speckit_reflex.contract import verdict_to_json
from speckit_reflex.v1 import capsule_pb2

K = capsule_pb2.ThresholdFailureKind
S = capsule_pb2.ThresholdStatus
DAY_US = 86_400_000_000
SUITE = "reflex_patchloop_v1"
QWEN_A = "llamacpp:/models/qwen-a.gguf@b5000"
QWEN_B = "llamacpp:/models/qwen-b.gguf@b5000"


def _now_us() -> int:
    return time.time_ns() // 1000


async def _run(
    capsule, run_id: str, *, ago_us: int = 60_000_000, version: int = 1, mode: str = "both"
) -> None:
    run = capsule_pb2.BakeoffRun(
        id=run_id, suite=SUITE, suite_version=version, mode=mode, status="done"
    )
    run.started_at.FromMicroseconds(_now_us() - ago_us)
    await capsule.upsert_bakeoff_run(run)


def _trial(
    run_id: str,
    task: int,
    mode: int,
    success: bool = True,
    *,
    model: str = "",
    calls: int = 1,
    replies: int | None = None,
    valid: int | None = None,
    latency: float = 500.0,
    identity: str = "",
    skipped: str = "",
    first: bool | None = None,
) -> capsule_pb2.Trial:
    replies = calls if replies is None else replies
    valid = replies if valid is None else valid
    return capsule_pb2.Trial(
        id=f"{run_id}-{mode}-{task}",
        bakeoff_run_id=run_id,
        task_id=f"task{task}",
        mode=mode,  # type: ignore[arg-type]
        model=model or ("qwen" if mode == REFLEX else "deepseek-chat"),
        success=success and not skipped,
        attempts=calls,
        model_calls=0 if skipped else calls,
        replies=0 if skipped else replies,
        schema_valid_replies=0 if skipped else valid,
        call_latency_ms=[] if skipped else [latency] * replies,
        first_attempt_success=success if first is None else first,
        model_identity=identity,
        skipped=skipped,
    )


def _status(reply, name: str) -> int:
    return next(r.status for r in reply.results if r.name == name)


async def test_same_task_pairing_compares_only_tasks_both_modes_ran(capsule):
    await _run(capsule, "run-1")
    # Reflex ran tasks 0-24 and failed 0-4; cloud ran tasks 5-29 and fixed all.
    trials = [_trial("run-1", i, REFLEX, success=i >= 5) for i in range(25)]
    trials += [_trial("run-1", i, CLOUD) for i in range(5, 30)]
    await capsule.record_trials(trials)
    reply = await capsule.check_thresholds(window("24h"))
    assert (reply.paired_tasks, reply.unpaired_tasks) == (20, 10)
    assert reply.baseline.kind == "same_runs"
    # Tasks 0-4 (reflex only) and 25-29 (cloud only) are not compared: 20/20 vs 20/20.
    assert reply.success_parity_percent == pytest.approx(100.0)
    assert (reply.reflex.tasks, reply.reflex.fixed, reply.cloud.tasks) == (20, 20, 20)
    assert reply.passed and reply.status == S.THRESHOLD_STATUS_PASS
    assert list(reply.bakeoff_run_ids) == ["run-1"]


async def test_newest_trial_of_a_task_wins_across_the_windows_runs(capsule):
    await _run(capsule, "old", ago_us=2 * 3_600_000_000)
    await _run(capsule, "new")
    await capsule.record_trials(
        [_trial("old", i, REFLEX, success=False) for i in range(20)]
        + [_trial("old", i, CLOUD) for i in range(20)]
        + [_trial("new", i, REFLEX) for i in range(20)]
    )
    reply = await capsule.check_thresholds(window("24h"))
    assert list(reply.bakeoff_run_ids) == ["new", "old"]
    assert reply.reflex.fixed == 20 and reply.passed


async def test_errors_are_not_schema_failures(capsule):
    await _run(capsule, "run-1")
    # Every task: 3 calls, one timed out (no reply), two valid replies.
    await capsule.record_trials(
        [_trial("run-1", i, REFLEX, calls=3, replies=2) for i in range(20)]
        + [_trial("run-1", i, CLOUD) for i in range(20)]
    )
    reply = await capsule.check_thresholds(window("24h"))
    r = reply.reflex
    assert (r.model_calls, r.replies, r.errors, r.schema_valid_replies) == (60, 40, 20, 40)
    assert r.json_compliance_rate == pytest.approx(100.0)
    assert r.availability_percent == pytest.approx(200 / 3)
    assert _status(reply, "json_schema_compliance_percent") == S.THRESHOLD_STATUS_PASS
    # A reply that does not validate is a schema failure.
    await _run(capsule, "run-2")
    await capsule.record_trials(
        [_trial("run-2", i, REFLEX, calls=2, replies=2, valid=1) for i in range(20)]
    )
    reply = await capsule.check_thresholds(window("24h"), bakeoff_run_id="run-2")
    assert reply.reflex.json_compliance_rate == pytest.approx(50.0) and reply.reflex.errors == 0
    assert _status(reply, "json_schema_compliance_percent") == S.THRESHOLD_STATUS_FAIL


async def test_live_statistics_count_errors_apart_from_schema_failures(capsule):
    # PatchLoop stores an attempt whose model call failed with json_valid unset.
    await capsule.append_events(
        [attempt(REFLEX, "qwen", 400.0, json_valid=True) for _ in range(3)]
        + [attempt(REFLEX, "qwen", 900.0, success=False, json_valid=False)]
    )
    ev = attempt(REFLEX, "qwen", 9000.0, success=False, reason="model_error")
    ev.ClearField("json_valid")
    await capsule.append_events([ev])
    stats = await capsule.bakeoff_stats(window("24h"))
    assert (stats.reflex.total_attempts, stats.reflex.replies, stats.reflex.errors) == (5, 4, 1)
    assert stats.reflex.json_compliance_rate == pytest.approx(75.0)  # 3 valid of 4 replies
    assert stats.reflex.availability_percent == pytest.approx(80.0)


async def test_empty_data_is_not_judged_with_no_figures(capsule):
    reply = await capsule.check_thresholds(window("24h"))
    assert not reply.passed and reply.status == S.THRESHOLD_STATUS_NOT_JUDGED
    assert [r.status for r in reply.results] == [S.THRESHOLD_STATUS_NOT_JUDGED] * 3
    assert not any(r.HasField("observed") for r in reply.results)
    doc = verdict_to_json(reply)
    assert doc["status"] == "not_judged"
    for figure in (
        "success_rate",
        "pass_at_1",
        "json_compliance_rate",
        "availability_percent",
        "p95_latency_ms",
    ):
        assert doc["reflex"][figure] is None and doc["cloud"][figure] is None
    live = doc["live_statistics"]["reflex"]
    assert (
        live["total_attempts"] == 0
        and live["p95_latency_ms"] is None
        and live["json_compliance_rate"] is None
    )


async def test_too_few_tasks_is_not_judged_never_a_pass(capsule):
    await _run(capsule, "run-1")
    await capsule.record_trials(
        [_trial("run-1", i, REFLEX) for i in range(5)]
        + [_trial("run-1", i, CLOUD) for i in range(5)]
    )
    reply = await capsule.check_thresholds(window("24h"))
    assert reply.status == S.THRESHOLD_STATUS_NOT_JUDGED and not reply.passed
    assert {f.kind for f in reply.failures} == {K.THRESHOLD_FAILURE_KIND_TOO_FEW_SAMPLES}
    assert (await capsule.check_thresholds(window("24h"), min_samples=5)).passed


async def test_fail_beats_not_judged_and_each_threshold_says_why(capsule):
    await _run(capsule, "run-1", mode="reflex")
    await capsule.record_trials([_trial("run-1", i, REFLEX, latency=2500.0) for i in range(20)])
    reply = await capsule.check_thresholds(window("24h"))
    assert reply.status == S.THRESHOLD_STATUS_FAIL
    assert _status(reply, "p95_latency_ms") == S.THRESHOLD_STATUS_FAIL
    assert _status(reply, "success_parity_percent") == S.THRESHOLD_STATUS_NOT_JUDGED
    assert _status(reply, "json_schema_compliance_percent") == S.THRESHOLD_STATUS_PASS
    assert reply.baseline.kind == "none"
    assert K.THRESHOLD_FAILURE_KIND_NO_BASELINE in {f.kind for f in reply.failures}


async def test_local_only_promotion_from_a_recorded_baseline_run(capsule):
    # Three days ago, with a cloud key: both modes on suite version 1.
    await _run(capsule, "with-cloud", ago_us=3 * DAY_US)
    await capsule.record_trials([_trial("with-cloud", i, CLOUD, success=i < 18) for i in range(20)])
    # Today, local-only: reflex only, cloud trials skipped (no key).
    await _run(capsule, "local", mode="reflex")
    await capsule.record_trials(
        [_trial("local", i, REFLEX, success=i < 17) for i in range(20)]
        + [_trial("local", i, CLOUD, skipped="DEEPSEEK_API_KEY is not set") for i in range(20)]
    )
    reply = await capsule.check_thresholds(window("24h"))
    assert reply.baseline.kind == "recorded_run" and reply.baseline.bakeoff_run_id == "with-cloud"
    assert abs(reply.baseline.recorded_at.ToMicroseconds() - (_now_us() - 3 * DAY_US)) < 60_000_000
    assert "with-cloud" in reply.baseline.description and "recorded" in reply.baseline.description
    assert reply.paired_tasks == 20 and reply.cloud.tasks == 20
    assert reply.success_parity_percent == pytest.approx(85 / 90 * 100)
    assert reply.passed, [f.message for f in reply.failures]
    # The skipped cloud trials are counted as skipped, never as attempts.
    assert list(reply.bakeoff_run_ids) == ["local"] and reply.cloud.skipped == 20
    # Another suite version is not a baseline.
    await _run(capsule, "local-v2", version=2, mode="reflex", ago_us=1_000_000)
    await capsule.record_trials([_trial("local-v2", i, REFLEX) for i in range(20)])
    v2 = await capsule.check_thresholds(window("24h"), bakeoff_run_id="local-v2")
    assert v2.baseline.kind == "none" and v2.status == S.THRESHOLD_STATUS_NOT_JUDGED


async def test_skipped_trials_are_not_attempts(capsule):
    await _run(capsule, "local", mode="reflex")
    await capsule.record_trials(
        [_trial("local", i, CLOUD, skipped="DEEPSEEK_API_KEY is not set") for i in range(3)]
    )
    reply = await capsule.check_thresholds(window("24h"))
    assert (reply.cloud.skipped, reply.cloud.tasks, reply.cloud.model_calls) == (3, 0, 0)


async def test_absolute_baseline_from_the_policy(start_capsule):
    _, capsule = await start_capsule({"routing.reflex.thresholds.absolute_success_percent": "60"})
    await _run(capsule, "local", mode="reflex")
    await capsule.record_trials([_trial("local", i, REFLEX, success=i < 14) for i in range(20)])
    reply = await capsule.check_thresholds(window("24h"))
    assert reply.baseline.kind == "absolute" and "60" in reply.baseline.description
    assert _status(reply, "success_percent") == S.THRESHOLD_STATUS_PASS  # 70 % >= 60 %
    assert reply.passed and not reply.HasField("success_parity_percent")


async def test_a_changed_model_identity_invalidates_the_verdict(capsule):
    await _run(capsule, "run-1")
    await capsule.record_trials(
        [_trial("run-1", i, REFLEX, identity=QWEN_A) for i in range(20)]
        + [_trial("run-1", i, CLOUD) for i in range(20)]
    )
    same = await capsule.check_thresholds(window("24h"), model="qwen", model_identity=QWEN_A)
    assert same.passed and same.reflex.model_identity == QWEN_A and not same.invalidated
    changed = await capsule.check_thresholds(window("24h"), model="qwen", model_identity=QWEN_B)
    assert not changed.passed and changed.status == S.THRESHOLD_STATUS_NOT_JUDGED
    assert (
        QWEN_A in changed.invalidated
        and QWEN_B in changed.invalidated
        and "run-1" in changed.invalidated
    )
    assert "re-run the bakeoff" in changed.invalidated
    assert changed.failures[0].kind == K.THRESHOLD_FAILURE_KIND_MODEL_CHANGED
    assert changed.reflex.tasks == 0


async def test_thresholds_from_request_and_per_model(capsule):
    await _run(capsule, "run-1")
    await capsule.record_trials(
        [_trial("run-1", i, REFLEX, latency=1000.0) for i in range(20)]
        + [_trial("run-1", 100 + i, REFLEX, model="tiny", valid=0) for i in range(20)]
        + [_trial("run-1", i, CLOUD) for i in range(20)]
        + [_trial("run-1", 100 + i, CLOUD) for i in range(20)]
    )
    strict = capsule_pb2.Thresholds(
        p95_latency_ms=500, success_parity_percent=85, json_schema_compliance_percent=100
    )
    qwen = await capsule.check_thresholds(window("24h"), thresholds=strict, model="qwen")
    assert qwen.model == "qwen" and [f.kind for f in qwen.failures] == [
        K.THRESHOLD_FAILURE_KIND_P95_TOO_HIGH
    ]
    assert (await capsule.check_thresholds(window("24h"), model="qwen")).passed
    tiny = await capsule.check_thresholds(window("24h"), model="tiny")
    assert [f.kind for f in tiny.failures] == [K.THRESHOLD_FAILURE_KIND_COMPLIANCE_TOO_LOW]
    assert (
        await capsule.check_thresholds(window("24h"), model="nope")
    ).status == S.THRESHOLD_STATUS_NOT_JUDGED


async def test_inconsistent_trial_counts_are_refused(capsule):
    import grpc

    bad = _trial("run-1", 1, REFLEX, calls=1, replies=2)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await capsule.record_trials([bad])
    assert (
        err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "trials[0]" in err.value.details()
    )


async def test_runs_of_two_suite_digests_are_never_judged_together(capsule):
    """One suite name, two corpora (a re-harvest): the verdict is formed from
    the newest run's digest only, or from the digest asked for."""
    for run_id, digest, ago, success in (
        ("corpus-a", "a" * 64, 2 * 3_600_000_000, False),
        ("corpus-b", "b" * 64, 60_000_000, True),
    ):
        run = capsule_pb2.BakeoffRun(
            id=run_id, suite=SUITE, suite_version=1, suite_digest=digest, mode="both", status="done"
        )
        run.started_at.FromMicroseconds(_now_us() - ago)
        await capsule.upsert_bakeoff_run(run)
        await capsule.record_trials(
            [_trial(run_id, i, REFLEX, success=success) for i in range(20)]
            + [_trial(run_id, i, CLOUD) for i in range(20)]
        )
    newest = await capsule.check_thresholds(window("24h"))
    assert list(newest.bakeoff_run_ids) == ["corpus-b"]
    assert newest.suite_digest == "b" * 64 and newest.reflex.fixed == 20
    assert verdict_to_json(newest)["suite_digest"] == "b" * 64
    older = await capsule.check_thresholds(window("24h"), suite_digest="a" * 64)
    assert list(older.bakeoff_run_ids) == ["corpus-a"]
    assert older.reflex.fixed == 0 and older.status == S.THRESHOLD_STATUS_FAIL
