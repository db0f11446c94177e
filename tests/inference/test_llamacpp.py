"""The adapter against the real embedded llama.cpp server with SmolLM2-135M.

The model is slow on busy shared cores (1-10 tokens/s), so replies are kept
to a few tokens and timeouts are generous.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from speckit_reflex.clients.capsule import CapsuleClient
from speckit_reflex.clients.inference import InferenceClient
from speckit_reflex.v1 import common_pb2
from tests.conftest import LlamaServer
from tests.waiting import eventually

from .conftest import make_policy

pytestmark = pytest.mark.llm

SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
    "additionalProperties": False,
}
# A stable prefix long enough for llama.cpp's prompt cache to matter.
SYSTEM = (
    "You are a careful assistant for a Rust compile-fix loop. You answer with one JSON document "
    "that matches the schema you are given, and nothing else: no prose, no markdown fences."
)


def llama_policy(server: LlamaServer, **health: float):  # type: ignore[no-untyped-def]
    return make_policy(
        routing={
            "reflex": {
                "enabled": True,
                "model": server.model,
                "timeout_ms": 240_000,
                "backends": [{"name": "llama", "kind": "llamacpp", "endpoint": server.base_url}],
            },
            "health": {
                "probe_interval_s": 60,
                "stale_after_s": 600,
                "probe_timeout_ms": 60_000,
                **health,
            },
        },
        privacy={"local_only": True},
        inference={"max_validation_retries": 1},
    )


async def test_schema_reply_end_to_end_is_recorded_in_capsule(
    llama_server, services_factory, sqlite_url
):
    """Done-when: validated reply with TTFT, tokens and cached tokens; the LLMCall event is in Capsule."""
    svc = await services_factory(
        ["capsule", "inference"], database_url=sqlite_url, policy=llama_policy(llama_server)
    )
    llm = InferenceClient(svc.ctx.channel("inference"))
    messages = [("system", SYSTEM), ("user", "Is 2 + 2 = 4? Answer with ok.")]
    replies = []
    for attempt in (1, 2):  # the second call repeats the prefix: the cache must hit
        replies.append(
            await llm.complete(
                messages,
                json_schema=SCHEMA,
                schema_name="answer",
                max_tokens=16,
                temperature=0.0,
                session_id="llama-e2e",
                attempt=attempt,
                timeout=300,
            )
        )
    for reply in replies:
        assert reply.schema_valid, reply.validation_error
        assert isinstance(json.loads(reply.content)["ok"], bool)
        assert reply.backend == "llama" and reply.model == llama_server.model
        assert (
            reply.timing.HasField("ttft_ms") and 0 < reply.timing.ttft_ms <= reply.timing.latency_ms
        )
        assert reply.usage.prompt_tokens > 30 and reply.usage.completion_tokens > 0
        assert reply.usage.HasField("cached_tokens")
    assert replies[1].usage.cached_tokens > 0

    capsule = CapsuleClient(svc.ctx.channel("capsule"))
    events = await eventually(
        lambda: capsule.all_events(type=common_pb2.EVENT_TYPE_LLM_CALL, session_id="llama-e2e"),
        lambda events: len(events) >= 2,
        what="both calls' LLMCall events in Capsule",
        interval_s=0.05,
    )
    by_id = {e.id: e for e in events}
    assert set(by_id) == {r.call_id for r in replies}
    ev = by_id[replies[1].call_id]
    assert ev.backend == "llama" and ev.model == llama_server.model and ev.json_valid and ev.success
    assert ev.cached_tokens == replies[1].usage.cached_tokens
    assert ev.completion_tokens == replies[1].usage.completion_tokens
    assert ev.HasField("ttft_ms") and ev.attempt == 2


async def test_streaming_reports_usage(llama_server, services_factory):
    svc = await services_factory(["inference"], policy=llama_policy(llama_server))
    llm = InferenceClient(svc.ctx.channel("inference"))
    chunks = [
        c
        async for c in llm.stream_complete(
            [("user", "Say hello.")], max_tokens=4, temperature=0.0, timeout=300
        )
    ]
    deltas = [c.delta for c in chunks if c.WhichOneof("kind") == "delta"]
    final = chunks[-1].final
    assert deltas and "".join(deltas) == final.content
    assert final.usage.prompt_tokens > 0 and 0 < final.usage.completion_tokens <= 4
    assert final.finish_reason in ("stop", "length")
    assert final.timing.HasField("ttft_ms") and final.timing.tokens_per_s > 0


async def test_health_passes_and_fails_when_the_server_stops(services_factory):
    server = await asyncio.to_thread(LlamaServer.on_free_port, 120.0)
    try:
        # A long probe timeout: the 1-token generation can wait on busy cores.
        svc = await services_factory(
            ["inference"], policy=llama_policy(server, probe_timeout_ms=120_000)
        )
        llm = InferenceClient(svc.ctx.channel("inference"))
        up = (await llm.health("llama", refresh=True, timeout=180)).backends[0]
        assert up.healthy and up.reachable and up.model_listed and up.generation_ok, up.reason
        assert up.model == server.model and up.checked_at.seconds > 0
        # The weights as llama.cpp's /props reports them: the GGUF file and the server build.
        assert up.identity.source == "/props" and up.identity.weights.endswith(".gguf"), up.identity
        assert up.identity.build and up.identity.key.startswith(
            f"llamacpp:{up.identity.weights}@{up.identity.build}"
        )
        models = await llm.list_models("llama")
        assert models.models[0].identity.key == up.identity.key
        assert [(m.id, m.owned_by) for m in models.models] == [(server.model, "llamacpp")]
    finally:
        await asyncio.to_thread(server.stop)
    down = (await llm.health("llama", refresh=True, timeout=60)).backends[0]
    assert not down.healthy and not down.reachable
    assert down.reason.startswith("unreachable: connect_error")


async def test_back_to_back_calls_on_pooled_connections_all_succeed(llama_server, services_factory):
    # llama.cpp's server closes the connection after a streamed reply; the
    # adapter's pool only finds out when it reuses it. Calls through the real
    # service one after another must each be served by llama.cpp with no
    # failover (every other call used to fail with "Server disconnected",
    # which cooled the backend down and ended in UNAVAILABLE).
    svc = await services_factory(["capsule", "inference"], policy=llama_policy(llama_server))
    llm = InferenceClient(svc.ctx.channel("inference"))
    for i in range(4):
        reply = await llm.complete(
            [("system", SYSTEM), ("user", f"Is {i} + 1 = {i + 1}? Set ok.")],
            json_schema=SCHEMA,
            schema_name="answer",
            max_tokens=16,
            timeout=240,
        )
        assert (reply.backend, list(reply.failovers)) == ("llama", []), (i, reply)
