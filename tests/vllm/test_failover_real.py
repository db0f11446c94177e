"""Failover across two real runtimes: the embedded llama.cpp server (primary)
and real vLLM (fallback), both serving SmolLM2-135M, under the four real
services. The primary is killed (SIGKILL) right after it answered attempt 1;
attempt 2 must be served by vLLM, the Router's decision and the adapter's
LLMCall must say why, and Capsule must hold each attempt exactly once.

Only the cloud is an HTTP stand-in (it cannot run here); it must not be called.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from google.protobuf.json_format import MessageToDict

from speckit_reflex.clients.patchloop import PatchLoopClient
from speckit_reflex.clients.router import RouterClient
from speckit_reflex.v1 import common_pb2
from tests.conftest import LlamaServer
from tests.inference.fakes import FakeModelServer
from tests.ports import HeldPort
from tests.system.test_system_reliability import (
    FIXED,
    KEY_ENV,
    LLM,
    PA,
    make_crate,
    start_stack,
    write_policy,
)

from .conftest import VLLMServer, events_when

pytestmark = [pytest.mark.vllm, pytest.mark.llm, pytest.mark.cargo]
RD = common_pb2.EVENT_TYPE_ROUTING_DECISION


async def _until_routed_to(router: RouterClient, backend: str, timeout_s: float = 120) -> None:
    """Wait for the Router's health view to route to `backend` (its first
    probes of a just-started llama.cpp server may still be pending)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while True:
        d = await router.decide(
            stage=common_pb2.STAGE_IMPLEMENT,
            role=common_pb2.ROLE_IMPLEMENTER,
            session_id="readiness",
            attempt=1,
            timeout=30,
        )
        if d.backend == backend:
            return
        assert loop.time() < end, f"the Router never routed to {backend}: {d.detail}"
        await asyncio.sleep(0.2)


async def test_llamacpp_killed_mid_run_next_attempt_served_by_vllm_each_attempt_recorded_once(
    vllm_server: VLLMServer, services_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-test")
    llama = LlamaServer.on_free_port()
    dead: HeldPort | None = None
    cloud = await FakeModelServer(
        kind="openai", models=["cloud-model"], reply=json.dumps(FIXED)
    ).start()
    assert llama.model == vllm_server.model  # one model, two runtimes
    try:
        # max_failures above max_attempts: the run stays on the reflex lane.
        pol = write_policy(
            tmp_path / "p.toml",
            [("llama", "llamacpp", llama.base_url), ("vllm", "vllm", vllm_server.base_url)],
            cloud.base_url,
            max_failures=3,
            model=llama.model,
            timeout_ms=240_000,
            max_attempts=2,
            probe_timeout_ms=60_000,
        )  # a busy 2-core box answers a probe in seconds
        svc, capsule = await start_stack(services_factory, tmp_path, pol, model=llama.model)
        await _until_routed_to(RouterClient(svc.ctx.channel("router")), "llama")
        ws = make_crate(tmp_path / "ws")
        result = None
        killed_after: list[int] = []
        async for ev in PatchLoopClient(svc.ctx.channel("patchloop")).run(
            str(ws), run_id="real-failover", session_id="real-failover"
        ):
            kind = ev.WhichOneof("kind")
            if kind == "model_call" and ev.attempt == 1:
                assert llama.proc is not None
                llama.proc.kill()  # the primary dies right after answering attempt 1
                llama.proc.wait(10)
                dead = HeldPort(llama.port)  # refused from now on, never another server's
                killed_after.append(ev.attempt)
            if kind == "result":
                result = ev.result
        assert killed_after == [1]
        assert result is not None and result.attempts == 2 and not result.escalated, result
        assert cloud.connections_total == 0

        events = await events_when(capsule, 2 + 2 + 2 + 1, run_id="real-failover")
        # Each attempt exactly once: none lost, none double-counted.
        attempts = sorted((e for e in events if e.type == PA), key=lambda e: e.attempt)
        assert [(a.attempt, a.backend) for a in attempts] == [(1, "llama"), (2, "vllm")]
        assert len({e.id for e in events}) == len(events)
        calls = sorted((e for e in events if e.type == LLM), key=lambda e: e.attempt)
        assert [(c.attempt, c.backend) for c in calls] == [(1, "llama"), (2, "vllm")]
        assert not calls[0].is_fallback and calls[1].is_fallback
        # The LLMCall of attempt 2 says why: llama was refused (dead) or skipped
        # as unhealthy or cooling down, with that reason.
        failovers = MessageToDict(calls[1].payload)["failovers"]
        assert [f["backend"] for f in failovers] == ["llama"], failovers
        assert re.search(r"connect|unreachable|unhealthy|cooling_down", failovers[0]["reason"]), (
            failovers
        )
        assert f"llama={failovers[0]['reason']}" in calls[1].reason
        # The Router's decisions: attempt 1 to llama; attempt 2 to vLLM when its
        # health view already saw the kill, else still to llama (a view from
        # before the kill), and then the adapter's failover above is the record.
        decisions = {e.attempt: e for e in events if e.type == RD}
        assert decisions[1].backend == "llama"
        detail = MessageToDict(decisions[2].payload)["detail"]
        assert f"on {decisions[2].backend}: backend healthy" in detail, detail
        assert decisions[2].backend in ("vllm", "llama")
        print(
            f"killed llama after attempt 1; attempt 2 routed to {decisions[2].backend}, served by "
            f"{calls[1].backend}; LLMCall reason: {calls[1].reason}"
        )
    finally:
        llama.stop()
        if dead is not None:
            dead.close()
        await cloud.stop()
