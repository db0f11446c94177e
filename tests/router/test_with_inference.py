"""The Router with the real Inference Adapter probing a real llama.cpp server
(SmolLM2): when the server stops, the next decision after the health refresh
leaves reflex with server_unhealthy."""

from __future__ import annotations

import asyncio

import pytest

from speckit_reflex.clients.router import RouterClient
from speckit_reflex.v1 import common_pb2 as c
from tests.conftest import LlamaServer
from tests.ports import HeldPort

from .conftest import Peers, make_policy

pytestmark = pytest.mark.llm


async def test_stopped_llama_server_sends_the_next_decision_to_cloud(
    peers: Peers, services_factory
) -> None:
    llama = LlamaServer.on_free_port()
    dead: HeldPort | None = None
    try:
        peers.capsule.passed = {llama.model: True}
        policy = make_policy(
            {
                "routing": {
                    "reflex": {
                        "model_primary": llama.model,
                        "model_fallbacks": [],
                        "backends": [
                            {
                                "name": "llama",
                                "kind": "llamacpp",
                                "endpoint": llama.base_url,
                                "models": [llama.model],
                            }
                        ],
                    },
                    "health": {
                        "probe_interval_s": 0.5,
                        "probe_timeout_ms": 20_000,
                        "stale_after_s": 60,
                        "cooldown_s": 0,
                    },
                }
            }
        )
        svc = await services_factory(
            ["inference", "router"], policy=policy, capsule_addr=peers.capsule_addr
        )
        router = RouterClient(svc.ctx.channel("router"))
        request = {"stage": c.STAGE_IMPLEMENT, "role": c.ROLE_IMPLEMENTER, "session_id": "llama"}

        first = await _poll(router, request, lambda d: d.mode == c.ROUTING_MODE_REFLEX, 60)
        assert (first.model, first.backend, first.endpoint) == (
            llama.model,
            "llama",
            llama.base_url,
        )

        llama.stop()
        # Its port held from now on: refused, never another server's answer.
        dead = HeldPort(llama.port)
        after = await _poll(router, request, lambda d: d.mode == c.ROUTING_MODE_CLOUD, 60)
        assert after.reason == c.ROUTING_REASON_SERVER_UNHEALTHY
        assert [(s.model, s.reason) for s in after.skipped] == [
            (llama.model, c.ROUTING_REASON_SERVER_UNHEALTHY)
        ]
        assert "unreachable" in after.skipped[0].detail
    finally:
        llama.stop()
        if dead is not None:
            dead.close()


async def _poll(router: RouterClient, request: dict, done, timeout_s: float):  # type: ignore[no-untyped-def]
    """Decide until `done(decision)`: the background refreshes run meanwhile."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    decision = await router.decide(**request)
    while not done(decision) and loop.time() < deadline:
        await asyncio.sleep(0.2)
        decision = await router.decide(**request)
    assert done(decision), decision
    return decision
