"""`speckit reflex check --exit-code` is the CI gate: exit 0 when reflex holds
the thresholds, non-zero when it does not or when samples are too few.
Events are made for each case and appended to a real Capsule service."""

from __future__ import annotations

from speckit_reflex.clients.capsule import CapsuleClient
from speckit_reflex.v1 import common_pb2

from .conftest import attempt_event, run_speckit, speckit_env

REFLEX, CLOUD = common_pb2.ROUTING_MODE_REFLEX, common_pb2.ROUTING_MODE_CLOUD


async def _capsule_with(services_factory, db_url: str, events: list[common_pb2.Event]):  # type: ignore[no-untyped-def]
    svc = await services_factory(["capsule"], database_url=db_url)
    reply = await CapsuleClient(svc.ctx.channel("capsule")).append_events(events)
    assert reply.inserted == len(events)
    return speckit_env({"capsule": svc.addr("capsule")})


def _good_reflex(n: int) -> list[common_pb2.Event]:
    # 10 reflex attempts, 9 fixed (90 %), all valid JSON, latencies 300..1200 ms.
    return [attempt_event(REFLEX, success=i != 0, latency_ms=300 + 100 * i) for i in range(n)]


def _cloud(n: int, fixed: int) -> list[common_pb2.Event]:
    return [attempt_event(CLOUD, success=i < fixed, latency_ms=4000) for i in range(n)]


async def test_check_exits_zero_when_thresholds_hold(services_factory, migrated_db_url: str) -> None:
    env = await _capsule_with(services_factory, migrated_db_url, _good_reflex(10) + _cloud(10, fixed=10))
    run = await _cli(["reflex", "check", "--since", "1h", "--min-samples", "10", "--exit-code", "--json"], env)
    assert run.code == 0, run.stderr
    doc = run.json()
    assert doc["passed"] is True
    assert doc["failures"] == []
    assert doc["reflex"]["total_attempts"] == 10
    assert doc["reflex"]["success_rate"] == 90.0
    assert doc["success_parity_percent"] == 90.0
    # Table form, same verdict and exit code.
    table = await _cli(["reflex", "check", "--since", "1h", "--min-samples", "10", "--exit-code"], env)
    assert table.code == 0
    assert "PASS" in table.stdout


async def test_check_exits_nonzero_when_parity_and_compliance_fail(services_factory, migrated_db_url: str) -> None:
    reflex = [attempt_event(REFLEX, success=i < 3, latency_ms=500, json_valid=i != 9) for i in range(10)]
    env = await _capsule_with(services_factory, migrated_db_url, reflex + _cloud(10, fixed=10))
    run = await _cli(["reflex", "check", "--since", "1h", "--min-samples", "10", "--exit-code", "--json"], env)
    assert run.code == 1
    doc = run.json()
    assert doc["passed"] is False
    kinds = {f["kind"] for f in doc["failures"]}
    assert kinds == {"parity_too_low", "compliance_too_low"}
    assert doc["success_parity_percent"] == 30.0
    assert doc["reflex"]["json_compliance_rate"] == 90.0


async def test_check_exits_nonzero_when_p95_latency_too_high(services_factory, migrated_db_url: str) -> None:
    reflex = [attempt_event(REFLEX, success=True, latency_ms=2500) for _ in range(10)]
    env = await _capsule_with(services_factory, migrated_db_url, reflex + _cloud(10, fixed=10))
    run = await _cli(["reflex", "check", "--since", "1h", "--min-samples", "10", "--exit-code", "--json"], env)
    assert run.code == 1
    assert [f["kind"] for f in run.json()["failures"]] == ["p95_too_high"]


async def test_check_exits_nonzero_on_too_few_samples_but_zero_without_exit_code(
    services_factory, migrated_db_url: str
) -> None:
    env = await _capsule_with(services_factory, migrated_db_url, _good_reflex(10) + _cloud(10, fixed=10))
    gate = await _cli(["reflex", "check", "--since", "1h", "--min-samples", "20", "--exit-code", "--json"], env)
    assert gate.code == 1
    failures = gate.json()["failures"]
    assert {f["kind"] for f in failures} == {"too_few_samples"}
    assert {f["observed"] for f in failures} == {10}
    # Counts are JSON integers ("observed": 10, not 10.0).
    assert all(type(f["observed"]) is int and type(f["required"]) is int for f in failures), failures
    report_only = await _cli(["reflex", "check", "--since", "1h", "--min-samples", "20", "--json"], env)
    assert report_only.code == 0
    assert report_only.json()["passed"] is False


async def test_check_reports_an_unreachable_capsule_on_stderr(services_factory) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import free_port

    env = speckit_env({"capsule": f"127.0.0.1:{free_port()}"})
    run = await _cli(["reflex", "check", "--exit-code"], env)
    assert run.code == 1
    assert run.stdout == ""
    assert "capsule: UNAVAILABLE" in run.stderr


async def _cli(args: list[str], env: dict[str, str]):  # type: ignore[no-untyped-def]
    # The CLI is a separate process; the services live on this test's loop,
    # so the blocking subprocess call runs in a worker thread.
    import asyncio

    return await asyncio.to_thread(run_speckit, args, env)


async def test_bakeoff_shows_the_seed_json_shape_and_a_table(services_factory, migrated_db_url: str) -> None:
    env = await _capsule_with(services_factory, migrated_db_url, _good_reflex(10) + _cloud(4, fixed=3))
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
