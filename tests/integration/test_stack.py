"""A running stack through its public surface: the `speckit` CLI and the typed
clients. Works the same against the stack the tests start (default) and an
external one (SPECKIT_TEST_STACK=external, see conftest.py), so nothing here
assumes a particular model, backend name or empty database."""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from speckit_reflex.bakeoff.readiness import wait_for_reflex_route
from speckit_reflex.clients.capsule import CapsuleClient
from speckit_reflex.clients.patchloop import PatchLoopClient
from speckit_reflex.clients.router import RouterClient, refusal_reason
from speckit_reflex.v1 import common_pb2, patchloop_pb2

from .conftest import ROLES, StackUnderTest

pytestmark = [pytest.mark.cargo, pytest.mark.llm]
EVENT_WAIT_S = 30.0


async def _events_of_run(stack: StackUnderTest, run_id: str) -> list[common_pb2.Event]:
    """The run's events in Capsule, once its LOOP_RESULT has arrived (events
    are delivered in batches, after the run's stream has ended)."""
    async with stack.channel("capsule") as ch:
        capsule = CapsuleClient(ch)
        deadline = time.monotonic() + EVENT_WAIT_S
        while True:
            events = await capsule.all_events(run_id=run_id)
            if (
                any(e.type == common_pb2.EVENT_TYPE_LOOP_RESULT for e in events)
                or time.monotonic() > deadline
            ):
                return events
            await asyncio.sleep(0.2)


def _types(events: list[common_pb2.Event]) -> set[str]:
    return {common_pb2.EventType.Name(e.type) for e in events}


async def test_every_service_reports_serving(stack: StackUnderTest) -> None:
    for role in ROLES:
        async with stack.channel(role) as ch:
            reply = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, role


def test_status_models_and_health(stack: StackUnderTest) -> None:
    status = stack.speckit_json("reflex", "status")
    reflex = status["reflex"]
    assert status["sha256"] and reflex["enabled"] is True
    chain = [reflex["model_primary"], *reflex.get("model_fallbacks", [])]

    models = stack.speckit_json("reflex", "models")
    local = {b["name"] for b in reflex["backends"]}
    # The cloud API may be out of reach from a test host; the local servers may not.
    assert [u for u in models["unreachable"] if u["backend"] in local] == []
    served = {(m["backend"], m["id"]) for m in models["models"]}
    # Every policy backend serves exactly the names the policy expects.
    for b in reflex["backends"]:
        for model in b["models"]:
            assert (b["name"], model) in served, (b, sorted(served))
    assert {m for _, m in served} >= set(chain)

    health = stack.speckit_json("reflex", "health", "--refresh", timeout_s=180)
    assert health["healthy"] is True, health
    assert {(b["backend"], b["model"]) for b in health["backends"]} >= {
        (b["name"], m) for b in reflex["backends"] for m in b["models"]
    }


def test_a_call_without_the_token_is_refused(stack: StackUnderTest) -> None:
    if not stack.token:
        pytest.skip("the stack runs without a token")
    proc = stack.speckit("reflex", "status", SPECKIT_AUTH_TOKEN="")
    assert proc.returncode != 0
    assert "UNAUTHENTICATED" in proc.stderr


async def test_fix_loop_run_and_its_events_in_capsule(stack: StackUnderTest) -> None:
    session = f"it-{uuid.uuid4().hex[:8]}"
    crate = stack.new_crate()
    before = (crate / "src" / "lib.rs").read_text()
    done = await asyncio.to_thread(
        stack.speckit_json, "reflex", "run", str(crate), "--session-id", session
    )
    assert done["outcome"] == "fixed" and done["fixed_by"] == "compiler", done
    assert done["diff"] and done["applied"] is False
    assert (crate / "src" / "lib.rs").read_text() == before
    events = await _events_of_run(stack, done["run_id"])
    assert {"EVENT_TYPE_PATCH_ATTEMPT", "EVENT_TYPE_LOOP_RESULT"} <= _types(events), _types(events)
    assert {e.session_id for e in events} == {session}


async def test_fix_loop_asks_the_local_model(stack: StackUnderTest) -> None:
    """Without rustc's suggestions the loop must route to reflex and call the
    model: a routing decision and a model call are on record, whatever the
    (weak) model's patch came to."""
    async with stack.channel("router") as ch:
        # The Router learns backend health in the background; wait like trials do.
        await wait_for_reflex_route(RouterClient(ch), timeout_s=180)
    crate = stack.new_crate()
    done = await asyncio.to_thread(
        stack.speckit_json,
        "reflex",
        "run",
        str(crate),
        "--no-compiler-fast-path",
        "--mode",
        "reflex",
        "--max-attempts",
        "1",
        ok=(0, 1),
    )
    assert done["outcome"] in ("fixed", "gave_up"), done
    events = await _events_of_run(stack, done["run_id"])
    types = _types(events)
    assert {
        "EVENT_TYPE_ROUTING_DECISION",
        "EVENT_TYPE_LLM_CALL",
        "EVENT_TYPE_LOOP_RESULT",
    } <= types, types
    calls = [e for e in events if e.type == common_pb2.EVENT_TYPE_LLM_CALL]
    assert all(c.mode == common_pb2.ROUTING_MODE_REFLEX for c in calls)


def test_bakeoff_of_two_tasks_and_its_statistics(stack: StackUnderTest) -> None:
    before = stack.speckit_json("reflex", "bakeoff", "--since", "1h")["reflex"]
    run = stack.speckit_json(
        "reflex",
        "trials",
        "--mode",
        "reflex",
        "--limit",
        "2",
        "--max-attempts",
        "1",
        timeout_s=1200,
    )
    assert run["status"] == "done", run
    assert len(run["trials"]) == 2 and {t["mode"] for t in run["trials"]} == {"reflex"}
    assert run["report"]["json"].endswith(".json") and run["verdict"] is not None
    after = stack.speckit_json("reflex", "bakeoff", "--since", "1h")["reflex"]
    attempts = sum(t["attempts"] for t in run["trials"])
    assert after["total_attempts"] - before["total_attempts"] == attempts, (before, after)
    # The statistics use SPEC-KIT-978's JSON shape.
    assert {"total_attempts", "success_rate", "json_compliance_rate", "p95_latency_ms"} <= set(
        after
    )


def test_check_exit_code_is_the_ci_gate(stack: StackUnderTest) -> None:
    # Far more samples than any window holds: the gate must fail, and say why.
    args = ("reflex", "check", "--since", "1h", "--min-samples", "1000000")
    verdict = stack.speckit_json(*args)
    assert verdict["passed"] is False
    assert any(f["kind"] == "too_few_samples" for f in verdict["failures"]), verdict["failures"]
    gate = stack.speckit(*args, "--exit-code")
    assert gate.returncode == 1, gate.stderr
    assert stack.speckit(*args).returncode == 0


async def test_local_only_refuses_cloud_while_reflex_is_not_promoted(stack: StackUnderTest) -> None:
    gate = await asyncio.to_thread(stack.speckit_json, "reflex", "check")
    if gate["passed"]:
        pytest.skip("reflex holds its gate on this stack: it is promoted, nothing to refuse")
    session = f"it-local-{uuid.uuid4().hex[:8]}"
    async with stack.channel("router") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await RouterClient(ch).decide(
                role=common_pb2.ROLE_IMPLEMENTER,
                stage=common_pb2.STAGE_IMPLEMENT,
                session_id=session,
                local_only=True,
                timeout=10,
            )
    assert refusal_reason(refused.value) == "local_only_forbids_cloud", refused.value.details()

    # The same through PatchLoop: the run ends refused, nothing is changed.
    crate = stack.new_crate()
    async with stack.channel("patchloop") as ch:
        events, result = await PatchLoopClient(ch).run_to_end(
            str(crate), local_only=True, compiler_fast_path=False, session_id=session, timeout_s=300
        )
    assert result.outcome == patchloop_pb2.OUTCOME_REFUSED, result
    assert result.reason.startswith("local_only_forbids_cloud"), result.reason
    assert not any(ev.WhichOneof("kind") == "model_call" for ev in events)
