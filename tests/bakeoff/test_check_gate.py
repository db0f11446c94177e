"""`speckit reflex check --exit-code` is the CI gate: exit 0 only when every
threshold passes on the bakeoff's trials; a failed threshold and one that
cannot be judged (no data, too few tasks) both exit non-zero. Trials and
events are made for each case and stored in a real Capsule service."""

from __future__ import annotations

from speckit_reflex.clients.capsule import CapsuleClient
from speckit_reflex.v1 import capsule_pb2, common_pb2

from .conftest import attempt_event, run_speckit, speckit_env

REFLEX, CLOUD = common_pb2.ROUTING_MODE_REFLEX, common_pb2.ROUTING_MODE_CLOUD


def _trial(
    task: int, mode: int, success: bool = True, latency: float = 500.0, valid: bool = True
) -> capsule_pb2.Trial:
    return capsule_pb2.Trial(
        id=f"run-1-{mode}-{task}",
        bakeoff_run_id="run-1",
        task_id=f"t{task}",
        mode=mode,  # type: ignore[arg-type]
        model="smollm2" if mode == REFLEX else "deepseek-chat",
        success=success,
        attempts=1,
        first_attempt_success=success,
        model_calls=1,
        replies=1,
        schema_valid_replies=int(valid),
        call_latency_ms=[latency],
    )


async def _capsule_with(
    services_factory,
    db_url: str,
    trials: list[capsule_pb2.Trial],  # type: ignore[no-untyped-def]
    events: list[common_pb2.Event] | None = None,
):
    svc = await services_factory(["capsule"], database_url=db_url)
    capsule = CapsuleClient(svc.ctx.channel("capsule"))
    if trials:
        run = capsule_pb2.BakeoffRun(
            id="run-1", suite="reflex_patchloop_v1", suite_version=1, mode="both", status="done"
        )
        run.started_at.GetCurrentTime()
        await capsule.upsert_bakeoff_run(run)
        assert (await capsule.record_trials(trials)).inserted == len(trials)
    if events:
        assert (await capsule.append_events(events)).inserted == len(events)
    return speckit_env({"capsule": svc.addr("capsule")})


def _good(n: int = 10) -> list[capsule_pb2.Trial]:
    # Reflex fixes 9 of 10 tasks with latencies 300..1200 ms; cloud fixes all 10.
    return [_trial(i, REFLEX, success=i != 0, latency=300 + 100 * i) for i in range(n)] + [
        _trial(i, CLOUD, latency=4000) for i in range(n)
    ]


def _results(doc: dict) -> dict[str, str]:  # type: ignore[type-arg]
    return {r["name"]: r["status"] for r in doc["results"]}


async def test_check_exits_zero_when_thresholds_hold(
    services_factory, migrated_db_url: str
) -> None:
    env = await _capsule_with(services_factory, migrated_db_url, _good())
    run = await _cli(
        ["reflex", "check", "--since", "1h", "--min-samples", "10", "--exit-code", "--json"], env
    )
    assert run.code == 0, run.stderr
    doc = run.json()
    assert doc["status"] == "pass" and doc["passed"] is True and doc["failures"] == []
    assert set(_results(doc).values()) == {"pass"}
    assert (doc["reflex"]["tasks"], doc["reflex"]["success_rate"], doc["reflex"]["pass_at_1"]) == (
        10,
        90.0,
        90.0,
    )
    assert doc["success_parity_percent"] == 90.0 and doc["baseline"]["kind"] == "same_runs"
    # Table form, same verdict and exit code.
    table = await _cli(
        ["reflex", "check", "--since", "1h", "--min-samples", "10", "--exit-code"], env
    )
    assert table.code == 0
    assert "verdict: pass" in table.stdout and "baseline: same_runs" in table.stdout


async def test_check_exits_nonzero_when_parity_and_compliance_fail(
    services_factory, migrated_db_url: str
) -> None:
    reflex = [_trial(i, REFLEX, success=i < 3, valid=i != 9) for i in range(10)]
    env = await _capsule_with(
        services_factory, migrated_db_url, reflex + [_trial(i, CLOUD) for i in range(10)]
    )
    run = await _cli(
        ["reflex", "check", "--since", "1h", "--min-samples", "10", "--exit-code", "--json"], env
    )
    assert run.code == 1
    doc = run.json()
    assert doc["status"] == "fail"
    assert {f["kind"] for f in doc["failures"]} == {"parity_too_low", "compliance_too_low"}
    assert doc["success_parity_percent"] == 30.0
    assert doc["reflex"]["json_compliance_rate"] == 90.0


async def test_check_exits_nonzero_when_p95_latency_too_high(
    services_factory, migrated_db_url: str
) -> None:
    trials = [_trial(i, REFLEX, latency=2500) for i in range(10)] + [
        _trial(i, CLOUD) for i in range(10)
    ]
    env = await _capsule_with(services_factory, migrated_db_url, trials)
    run = await _cli(
        ["reflex", "check", "--since", "1h", "--min-samples", "10", "--exit-code", "--json"], env
    )
    assert run.code == 1
    assert [f["kind"] for f in run.json()["failures"]] == ["p95_too_high"]


async def test_check_exits_nonzero_on_too_few_samples_but_zero_without_exit_code(
    services_factory, migrated_db_url: str
) -> None:
    env = await _capsule_with(services_factory, migrated_db_url, _good())
    gate = await _cli(
        ["reflex", "check", "--since", "1h", "--min-samples", "20", "--exit-code", "--json"], env
    )
    assert gate.code == 1
    doc = gate.json()
    assert doc["status"] == "not_judged" and set(_results(doc).values()) == {"not_judged"}
    assert {f["kind"] for f in doc["failures"]} == {"too_few_samples"}
    # Counts are JSON integers ("observed": 10 tasks, not 10.0).
    assert {(f["observed"], f["required"]) for f in doc["failures"]} == {(10, 20)}
    assert all(
        type(f["observed"]) is int and type(f["required"]) is int for f in doc["failures"]
    ), doc["failures"]
    report_only = await _cli(
        ["reflex", "check", "--since", "1h", "--min-samples", "20", "--json"], env
    )
    assert report_only.code == 0
    assert report_only.json()["passed"] is False
    # The table says the shared reason once (the JSON keeps one failure per threshold).
    table = await _cli(["reflex", "check", "--since", "1h", "--min-samples", "20"], env)
    assert len(doc["failures"]) > 1
    assert table.stdout.count("10 task(s) judged, at least 20 required") == 1, table.stdout


async def test_empty_data_is_not_judged_null_in_json_dash_in_tables_and_fails_the_gate(
    services_factory, migrated_db_url: str
) -> None:
    # Production attempts alone are live statistics, never a verdict.
    events = [attempt_event(REFLEX, success=True, latency_ms=300) for _ in range(30)]
    env = await _capsule_with(services_factory, migrated_db_url, [], events)
    gate = await _cli(["reflex", "check", "--since", "1h", "--exit-code", "--json"], env)
    assert gate.code == 1
    doc = gate.json()
    assert doc["status"] == "not_judged" and doc["bakeoff_run_ids"] == []
    assert all(r["status"] == "not_judged" and r["observed"] is None for r in doc["results"])
    assert doc["reflex"]["p95_latency_ms"] is None and doc["reflex"]["json_compliance_rate"] is None
    assert doc["live_statistics"]["reflex"]["total_attempts"] == 30
    assert doc["live_statistics"]["cloud"]["p95_latency_ms"] is None
    table = await _cli(["reflex", "check", "--since", "1h", "--exit-code"], env)
    assert table.code == 1
    assert "not judged" in table.stdout and "0.0" not in table.stdout
    assert "│ p95_latency_ms" in table.stdout and "–" in table.stdout


async def test_check_reports_an_unreachable_capsule_on_stderr(
    services_factory, dead_endpoint
) -> None:  # type: ignore[no-untyped-def]
    env = speckit_env({"capsule": dead_endpoint().addr})
    run = await _cli(["reflex", "check", "--exit-code"], env)
    assert run.code == 1
    assert run.stdout == ""
    assert "capsule: UNAVAILABLE" in run.stderr


async def _cli(args: list[str], env: dict[str, str]):  # type: ignore[no-untyped-def]
    # The CLI is a separate process; the services live on this test's loop,
    # so the blocking subprocess call runs in a worker thread.
    import asyncio

    return await asyncio.to_thread(run_speckit, args, env)


async def test_bakeoff_shows_the_seed_json_shape_and_a_table(
    services_factory, migrated_db_url: str
) -> None:
    events = [attempt_event(REFLEX, success=i != 0, latency_ms=300 + 100 * i) for i in range(10)]
    events += [attempt_event(CLOUD, success=i < 3, latency_ms=4000) for i in range(4)]
    env = await _capsule_with(services_factory, migrated_db_url, [], events)
    run = await _cli(["reflex", "bakeoff", "--since", "24h", "--json"], env)
    assert run.code == 0, run.stderr
    doc = run.json()
    assert doc["period"] == "24h"
    seed = {"total_attempts", "success_rate", "json_compliance_rate", "p95_latency_ms"}
    assert seed <= set(doc["reflex"]) and seed <= set(doc["cloud"])
    assert (doc["reflex"]["total_attempts"], doc["reflex"]["success_rate"]) == (10, 90.0)
    assert doc["reflex"]["json_compliance_rate"] == 100.0
    assert doc["reflex"]["p95_latency_ms"] == 1155.0  # percentile_cont over 300..1200 ms
    assert (doc["cloud"]["total_attempts"], doc["cloud"]["success_rate"]) == (4, 75.0)
    assert doc["reflex"]["cache_hit_rate"] is None  # nothing reported: unknown, not 0
    table = await _cli(["reflex", "bakeoff"], env)
    assert table.code == 0
    assert "Bakeoff statistics, last 24h" in table.stdout and "unknown" in table.stdout
    bad = await _cli(["reflex", "bakeoff", "--since", "fortnight"], env)
    # Refused by the CLI itself (a usage error), before any service is called.
    assert bad.code == 2 and "'fortnight' is not a window" in bad.stderr and bad.stdout == ""
    # A window longer than Capsule reads (100 years: its start must stay a
    # timestamp) is refused the same way, also by replay, which computes its start.
    for command in (["reflex", "bakeoff"], ["reflex", "replay", "--model", "m"]):
        huge = await _cli([*command, "--since", "999999999999d"], env)
        assert huge.code == 2 and huge.stdout == "", huge
        assert "'999999999999d' is longer than 100 years" in huge.stderr, huge.stderr
