"""End to end: real Capsule, Inference, Router and PatchLoop services over gRPC.

Model servers are the embedded llama.cpp server with SmolLM2 (marked `llm`)
or, for the escalation paths, small local HTTP servers that answer like vLLM
and like an OpenAI-compatible cloud API (tests/inference/fakes.py) — a
legitimate stand-in for a cloud that cannot be reached from here.

The Router routes reflex only when the model's bakeoff verdict passes, so each
test first records a passing bakeoff run for the model, on the weights its
server reports, in Capsule.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import grpc
import pytest
from patchloop_support import FIXED_LINE, NOOP_LINE, kinds, tree_digest

from speckit_reflex.clients.capsule import CapsuleClient
from speckit_reflex.clients.inference import InferenceClient
from speckit_reflex.clients.patchloop import PatchLoopClient
from speckit_reflex.clients.router import RouterClient
from speckit_reflex.policy import load_policy
from speckit_reflex.v1 import common_pb2, patchloop_pb2
from tests.inference.fakes import FakeModelServer
from tests.verdict_evidence import record_bakeoff

PA = common_pb2.EVENT_TYPE_PATCH_ATTEMPT
LR = common_pb2.EVENT_TYPE_LOOP_RESULT
CLOUD_KEY_ENV = "SPECKIT_TEST_PATCHLOOP_CLOUD_KEY"


def write_policy(
    tmp_path: Path,
    *,
    kind: str,
    endpoint: str,
    model: str,
    cloud_endpoint: str,
    max_tokens: int = 384,
    timeout_ms: int = 10_000,
) -> Path:
    path = tmp_path / "model_policy.toml"
    path.write_text(f"""
[routing.reflex]
enabled = true
model = "{model}"
timeout_ms = {timeout_ms}
max_failures = 2
backends = [{{ name = "local", kind = "{kind}", endpoint = "{endpoint}", models = ["{model}"] }}]

[routing.cloud]
endpoint = "{cloud_endpoint}"
model = "cloud-model"
api_key_env = "{CLOUD_KEY_ENV}"
timeout_ms = 10000

[routing.health]
# Probes rarely (they would compete with the generations for the 2 cores), so
# health must stay fresh longer than one interval plus a probe's time: with
# the default 30 s, a slow first generation on a loaded machine left health
# "older than 30 s" and the second attempt went to cloud.
probe_interval_s = 60
probe_timeout_ms = 120000
stale_after_s = 600

[routing.verdicts]
min_samples = 3
refresh_s = 1

[inference]
max_validation_retries = 0

[patchloop]
max_attempts = 3
build_timeout_s = 120
max_tokens = {max_tokens}
compiler_fast_path = false
""")
    return path


async def start_stack(services_factory, tmp_path: Path, policy_path: Path, model: str, **settings):
    """Start the four services (with `settings`), then record a passing bakeoff
    for `model` on the weights its server reports, and wait until the Router
    routes reflex."""
    db = f"sqlite:///{tmp_path / 'e2e.db'}"
    policy = load_policy(policy_path)
    svc = await services_factory(
        ["capsule", "inference", "router", "patchloop"], database_url=db, policy=policy, **settings
    )
    health = await InferenceClient(svc.ctx.channel("inference")).health(
        "local", refresh=True, timeout=180
    )
    identity = health.backends[0].identity.key
    await record_bakeoff(
        CapsuleClient(svc.ctx.channel("capsule")),
        model,
        4,
        latency_ms=100.0,
        identity=identity,
        cloud_model="cloud-model",
    )
    # The Router learns the probed health (with the identity) and the verdict now, not a refresh interval later.
    await svc.servers["router"].service.refresher.refresh_all()
    router = RouterClient(svc.ctx.channel("router"))
    deadline = time.monotonic() + 60
    while True:
        d = await router.decide(
            stage=common_pb2.STAGE_IMPLEMENT,
            role=common_pb2.ROLE_IMPLEMENTER,
            session_id="readiness-probe",
            attempt=1,
            timeout=10,
        )
        if d.mode == common_pb2.ROUTING_MODE_REFLEX:
            break
        assert time.monotonic() < deadline, f"router never routed reflex: {d.detail}"
        await asyncio.sleep(0.3)
    return svc


async def capsule_events(
    svc, run_id: str, expected: int, timeout_s: float = 15.0
) -> list[common_pb2.Event]:
    """The run's PatchAttempt and LoopResult events once `expected` have arrived."""
    capsule = CapsuleClient(svc.ctx.channel("capsule"))
    deadline = time.monotonic() + timeout_s
    while True:
        events = [e for e in await capsule.all_events(run_id=run_id) if e.type in (PA, LR)]
        if len(events) >= expected or time.monotonic() > deadline:
            return events
        await asyncio.sleep(0.1)


async def test_reflex_fails_then_cloud_fixes_over_real_services(
    crate, services_factory, tmp_path, monkeypatch
):
    monkeypatch.setenv(CLOUD_KEY_ENV, "sk-test-cloud")
    reflex = await FakeModelServer(
        kind="vllm", models=["local-model"], reply=json.dumps(NOOP_LINE)
    ).start()
    cloud = await FakeModelServer(
        kind="openai", models=["cloud-model"], reply=json.dumps(FIXED_LINE)
    ).start()
    try:
        pol = write_policy(
            tmp_path,
            kind="vllm",
            endpoint=reflex.base_url,
            model="local-model",
            cloud_endpoint=cloud.base_url,
        )
        svc = await start_stack(services_factory, tmp_path, pol, "local-model")
        ws = crate("field_typo")
        client = PatchLoopClient(svc.ctx.channel("patchloop"))
        evs, result = await client.run_to_end(
            str(ws), run_id="e2e-escalate", session_id="e2e-s1", apply=True, timeout_s=120
        )

        assert result.outcome == patchloop_pb2.OUTCOME_FIXED, result.reason
        assert result.fixed_by == patchloop_pb2.FIX_SOURCE_CLOUD
        assert result.attempts == 3 and result.escalated and result.applied
        assert "self.width + self.height)" in (ws / "src/lib.rs").read_text()
        routes = kinds(evs, "routing")
        assert [r.mode for r in routes] == [common_pb2.ROUTING_MODE_REFLEX] * 2 + [
            common_pb2.ROUTING_MODE_CLOUD
        ]
        assert routes[2].reason == common_pb2.ROUTING_REASON_MAX_FAILURES_REACHED
        assert len(reflex.chats()) == 2 and len(cloud.chats()) == 1

        events = await capsule_events(svc, "e2e-escalate", 4)
        attempts = sorted((e for e in events if e.type == PA), key=lambda e: e.attempt)
        assert [(a.attempt, a.mode, a.success, a.model) for a in attempts] == [
            (1, common_pb2.ROUTING_MODE_REFLEX, False, "local-model"),
            (2, common_pb2.ROUTING_MODE_REFLEX, False, "local-model"),
            (3, common_pb2.ROUTING_MODE_CLOUD, True, "cloud-model"),
        ]
        assert all(a.json_valid and a.latency_ms > 0 and a.session_id == "e2e-s1" for a in attempts)
        (loop_result,) = [e for e in events if e.type == LR]
        assert (
            loop_result.payload["outcome"] == "fixed" and loop_result.payload["fixed_by"] == "cloud"
        )
        assert loop_result.payload["escalated"] is True

        status = await client.get_run("e2e-escalate")
        assert (
            status.state == patchloop_pb2.RUN_STATE_DONE
            and status.result.outcome == patchloop_pb2.OUTCOME_FIXED
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.get_run("no-such-run")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await reflex.stop()
        await cloud.stop()


async def test_local_only_run_is_refused_and_never_reaches_the_cloud(
    crate, services_factory, tmp_path, monkeypatch
):
    monkeypatch.setenv(CLOUD_KEY_ENV, "sk-test-cloud")
    reflex = await FakeModelServer(
        kind="vllm", models=["local-model"], reply=json.dumps(NOOP_LINE)
    ).start()
    cloud = await FakeModelServer(
        kind="openai", models=["cloud-model"], reply=json.dumps(FIXED_LINE)
    ).start()
    try:
        pol = write_policy(
            tmp_path,
            kind="vllm",
            endpoint=reflex.base_url,
            model="local-model",
            cloud_endpoint=cloud.base_url,
        )
        svc = await start_stack(services_factory, tmp_path, pol, "local-model")
        ws = crate("field_typo")
        before = tree_digest(ws)
        client = PatchLoopClient(svc.ctx.channel("patchloop"))
        _, result = await client.run_to_end(
            str(ws), run_id="e2e-local", local_only=True, apply=True, timeout_s=120
        )

        assert result.outcome == patchloop_pb2.OUTCOME_REFUSED
        assert result.reason.startswith("local_only_forbids_cloud")
        assert cloud.connections_total == 0, "GR-009: no connection to the cloud endpoint at all"
        assert tree_digest(ws) == before
        events = await capsule_events(svc, "e2e-local", 3)
        assert sorted(e.attempt for e in events if e.type == PA) == [1, 2]
        assert [e.payload["outcome"] for e in events if e.type == LR] == ["refused"]
    finally:
        await reflex.stop()
        await cloud.stop()


async def test_non_cargo_workspace_is_invalid_argument(services_factory, tmp_path):
    svc = await services_factory(["patchloop"])
    client = PatchLoopClient(svc.ctx.channel("patchloop"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.run_to_end(str(tmp_path), timeout_s=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no Cargo.toml" in err.value.details()


@pytest.mark.llm
async def test_embedded_model_loop_then_escalation_without_cloud_key(
    crate, services_factory, tmp_path, llama_server, monkeypatch
):
    """SmolLM2 gets the reflex attempts; with no cloud key the escalation is refused (nothing sent, the
    variable named), and that refused call is no attempt."""
    monkeypatch.delenv(CLOUD_KEY_ENV, raising=False)
    pol = write_policy(
        tmp_path,
        kind="llamacpp",
        endpoint=llama_server.base_url,
        model=llama_server.model,
        cloud_endpoint="http://127.0.0.1:9/v1",
        max_tokens=256,
        timeout_ms=240_000,
    )
    svc = await start_stack(services_factory, tmp_path, pol, llama_server.model)
    ws = crate("field_typo")
    before = tree_digest(ws)
    client = PatchLoopClient(svc.ctx.channel("patchloop"))
    evs, result = await client.run_to_end(str(ws), run_id="e2e-llama", timeout_s=900)

    calls = kinds(evs, "model_call")
    events = await capsule_events(svc, "e2e-llama", result.attempts + 1)
    attempts = sorted((e for e in events if e.type == PA), key=lambda e: e.attempt)
    refused = result.outcome == patchloop_pb2.OUTCOME_REFUSED
    assert len(attempts) == result.attempts - refused, (
        "every attempt is in Capsule, the refused call is none"
    )
    assert len([e for e in events if e.type == LR]) == 1
    reflex_attempts = [a for a in attempts if a.mode == common_pb2.ROUTING_MODE_REFLEX]
    assert all(a.model == llama_server.model and a.backend == "local" for a in reflex_attempts)
    assert all(a.prompt_tokens > 100 for a in reflex_attempts)
    if result.outcome == patchloop_pb2.OUTCOME_FIXED:
        # The tiny model can fix a one-letter typo; then it must be credited to reflex.
        assert result.fixed_by == patchloop_pb2.FIX_SOURCE_REFLEX and result.attempts <= 2
    else:
        assert refused, result.reason
        assert result.reason.startswith(f"cloud_key_missing: {CLOUD_KEY_ENV} is not set")
        assert result.attempts == 3 and result.escalated
        assert [a.mode for a in attempts] == [common_pb2.ROUTING_MODE_REFLEX] * 2
        assert tree_digest(ws) == before
    if len(reflex_attempts) == 2:
        second = reflex_attempts[1]
        assert second.HasField("cached_tokens")
        assert second.cached_tokens / second.prompt_tokens >= 0.8, (
            second.cached_tokens,
            second.prompt_tokens,
        )
        assert calls[1].cache_reuse >= 0.8
