"""Token auth on every RPC kind, client to service and service to service.

The four services run with SPECKIT_AUTH_TOKEN; the real `speckit reflex run`
fixes a crate through them: PatchLoop.Run (a server stream) from the CLI,
Router.Decide and Inference.StreamComplete (a server stream) from PatchLoop,
AppendEvents from every service's event sink. The model servers are the
vLLM-shaped and cloud-shaped fakes (no model can fix a crate reliably here).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import grpc
import pytest
from patchloop_support import FIXED_LINE, NOOP_LINE

from speckit_reflex.clients.capsule import CapsuleClient
from speckit_reflex.clients.channel import ChannelConfig, open_channel
from speckit_reflex.clients.inference import InferenceClient
from speckit_reflex.clients.router import RouterClient
from speckit_reflex.policy import load_policy
from speckit_reflex.v1 import (
    common_pb2,
    inference_pb2,
    inference_pb2_grpc,
    patchloop_pb2,
    patchloop_pb2_grpc,
)
from tests.bakeoff.conftest import run_speckit, speckit_env
from tests.inference.fakes import FakeModelServer
from tests.patchloop.test_patchloop_e2e import CLOUD_KEY_ENV, write_policy
from tests.verdict_evidence import record_bakeoff

TOKEN = "t0ken-for-the-auth-test"
SERVICES = ["capsule", "inference", "router", "patchloop"]


@pytest.fixture
async def guarded_stack(services_factory, tmp_path: Path, monkeypatch):  # type: ignore[no-untyped-def]
    """The four services with a token; reflex replies a no-op patch, the cloud the fix."""
    monkeypatch.setenv(CLOUD_KEY_ENV, "sk-test-cloud")
    reflex = await FakeModelServer(
        kind="vllm", models=["local-model"], reply=json.dumps(NOOP_LINE)
    ).start()
    cloud = await FakeModelServer(
        kind="openai", models=["cloud-model"], reply=json.dumps(FIXED_LINE)
    ).start()
    policy = load_policy(
        write_policy(
            tmp_path,
            kind="vllm",
            endpoint=reflex.base_url,
            model="local-model",
            cloud_endpoint=cloud.base_url,
        )
    )
    db = f"sqlite:///{tmp_path / 'auth.db'}"
    svc = await services_factory(SERVICES, database_url=db, policy=policy, auth_token=TOKEN)
    health = await InferenceClient(svc.ctx.channel("inference")).health(
        "local", refresh=True, timeout=60
    )
    await record_bakeoff(
        CapsuleClient(svc.ctx.channel("capsule")),
        "local-model",
        4,
        latency_ms=100.0,
        identity=health.backends[0].identity.key,
        cloud_model="cloud-model",
    )
    await svc.servers["router"].service.refresher.refresh_all()
    router = RouterClient(svc.ctx.channel("router"))
    deadline = time.monotonic() + 60
    while (
        await router.decide(
            stage=common_pb2.STAGE_IMPLEMENT,
            role=common_pb2.ROLE_IMPLEMENTER,
            session_id="readiness-probe",
            attempt=1,
            timeout=10,
        )
    ).mode != common_pb2.ROUTING_MODE_REFLEX:
        assert time.monotonic() < deadline, "the Router never routed reflex"
        await asyncio.sleep(0.3)
    try:
        yield svc
    finally:
        await reflex.stop()
        await cloud.stop()


async def _events(
    svc, session_id: str, want: set[int], timeout_s: float = 15.0
) -> list[common_pb2.Event]:  # type: ignore[no-untyped-def]
    capsule = CapsuleClient(svc.ctx.channel("capsule"))
    deadline = time.monotonic() + timeout_s
    while True:
        events = await capsule.all_events(session_id=session_id)
        if want <= {e.type for e in events} or time.monotonic() > deadline:
            return events
        await asyncio.sleep(0.1)


async def test_reflex_run_through_the_cli_with_a_token_on_services_and_client(
    guarded_stack, crate
) -> None:
    svc = guarded_stack
    ws = crate("field_typo")
    addrs = {name: svc.addr(name) for name in SERVICES}

    denied = await asyncio.to_thread(
        run_speckit, ["reflex", "run", str(ws), "--json"], speckit_env(addrs), 300
    )
    assert denied.code != 0 and denied.stdout == ""
    assert "UNAUTHENTICATED" in denied.stderr or "token" in denied.stderr, denied.stderr

    run = await asyncio.to_thread(
        run_speckit,
        [
            "reflex",
            "run",
            str(ws),
            "--no-compiler-fast-path",
            "--session-id",
            "auth-cli-1",
            "--json",
        ],
        speckit_env(addrs, SPECKIT_AUTH_TOKEN=TOKEN),
        300,
    )
    assert run.code == 0, run.stderr
    doc = run.json()
    # Two reflex attempts (Inference.StreamComplete from PatchLoop), then the cloud fixes it.
    assert doc["outcome"] == "fixed" and doc["fixed_by"] == "cloud", doc

    # Every service's event sink reached Capsule with the token.
    events = await _events(
        svc,
        "auth-cli-1",
        {
            common_pb2.EVENT_TYPE_ROUTING_DECISION,
            common_pb2.EVENT_TYPE_LLM_CALL,
            common_pb2.EVENT_TYPE_PATCH_ATTEMPT,
        },
    )
    types = [e.type for e in events]
    assert types.count(common_pb2.EVENT_TYPE_ROUTING_DECISION) >= 3, types
    assert types.count(common_pb2.EVENT_TYPE_LLM_CALL) == 3, types
    assert types.count(common_pb2.EVENT_TYPE_PATCH_ATTEMPT) == 3, types


@pytest.mark.parametrize("token", ["", "wrong-token"])
async def test_streaming_rpcs_without_the_token_are_unauthenticated(
    guarded_stack, crate, token: str
) -> None:
    svc = guarded_stack
    ws = crate("field_typo")
    async with open_channel(ChannelConfig(svc.addr("patchloop"), token=token)) as ch:
        stream = patchloop_pb2_grpc.PatchLoopStub(ch).Run(
            patchloop_pb2.RunRequest(workspace=str(ws)), timeout=30
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stream:
                pass
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    req = inference_pb2.CompleteRequest(
        messages=[inference_pb2.ChatMessage(role="user", content="hi")]
    )
    async with open_channel(ChannelConfig(svc.addr("inference"), token=token)) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in inference_pb2_grpc.InferenceStub(ch).StreamComplete(req, timeout=30):
                pass
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    async with open_channel(ChannelConfig(svc.addr("inference"), token=TOKEN)) as ch:
        chunks = [
            c async for c in inference_pb2_grpc.InferenceStub(ch).StreamComplete(req, timeout=30)
        ]
        assert chunks[-1].WhichOneof("kind") == "final"


async def test_service_to_service_streams_carry_the_token(guarded_stack) -> None:
    """PatchLoop's own channel to Inference (the one its port streams on) sends the token."""
    svc = guarded_stack
    stub = inference_pb2_grpc.InferenceStub(svc.ctx.channel("inference"))
    req = inference_pb2.CompleteRequest(
        messages=[inference_pb2.ChatMessage(role="user", content="hi")], session_id="s2s-stream"
    )
    chunks = [c async for c in stub.StreamComplete(req, timeout=30)]
    assert chunks[-1].final.backend == "local"
    events = await _events(svc, "s2s-stream", {common_pb2.EVENT_TYPE_LLM_CALL})
    assert [e.type for e in events] == [common_pb2.EVENT_TYPE_LLM_CALL]
