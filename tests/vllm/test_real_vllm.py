"""The adapter's `vllm` dialect against the real vLLM server (CPU build,
SmolLM2-135M converted from the bundled GGUF), over the Inference service's
gRPC API with a real Capsule behind it.

SmolLM2-135M is weak: replies are kept short and constrained by vLLM's own
structured output, so the checks are about the wire (schema, usage, cache
counts, health, listing, metrics), not about answer quality.
"""

from __future__ import annotations

import json

import jsonschema
import pytest

from speckit_reflex.clients.capsule import CapsuleClient
from speckit_reflex.clients.inference import InferenceClient
from speckit_reflex.inference.backends import BackendSpec, ModelServer
from speckit_reflex.v1 import common_pb2

from .conftest import VLLMServer, events_when, local_policy

pytestmark = pytest.mark.vllm

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "maxLength": 40}},
    "required": ["answer"],
    "additionalProperties": False,
}
# ~600 tokens of stable prefix: several of vLLM's 128-token cache blocks.
LONG_SYSTEM = "You fix Rust compile errors. Reference, do not repeat it:\n" + "\n".join(
    f"fn helper_{i}(width: u32, height: u32) -> u32 {{ width * {i} + height }}" for i in range(30)
)


@pytest.fixture
async def inference(vllm_server: VLLMServer, services_factory, sqlite_url: str):  # type: ignore[no-untyped-def]
    policy = local_policy([("vllm", "vllm", vllm_server.base_url)], vllm_server.model)
    svc = await services_factory(["capsule", "inference"], database_url=sqlite_url, policy=policy)
    return InferenceClient(svc.ctx.channel("inference")), CapsuleClient(svc.ctx.channel("capsule"))


async def test_health_and_model_listing(inference, vllm_server: VLLMServer) -> None:
    llm, _ = inference
    health = await llm.health("vllm", refresh=True, timeout=120)
    [b] = health.backends
    assert (b.kind, b.healthy, b.reachable, b.model_listed, b.generation_ok) == (
        "vllm",
        True,
        True,
        True,
        True,
    ), b
    assert b.model == vllm_server.model
    listing = await llm.list_models("vllm")
    assert [(m.id, m.backend, m.owned_by, m.max_model_len) for m in listing.models] == [
        (vllm_server.model, "vllm", "vllm", 2048)
    ]


async def test_schema_valid_json_reply_is_recorded(inference, vllm_server: VLLMServer) -> None:
    llm, capsule = inference
    reply = await llm.complete(
        [("user", "Name a colour. Reply as JSON.")],
        json_schema=SCHEMA,
        schema_name="colour",
        max_tokens=48,
        temperature=0.0,
        seed=1,
        session_id="vllm-schema",
        attempt=1,
        timeout=300,
    )
    assert reply.schema_valid, reply.validation_error
    jsonschema.validate(json.loads(reply.content), SCHEMA)
    assert (reply.backend, reply.model) == ("vllm", vllm_server.model)
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    assert 0 < reply.timing.ttft_ms <= reply.timing.latency_ms
    calls = await events_when(
        capsule, 1, type=common_pb2.EVENT_TYPE_LLM_CALL, session_id="vllm-schema"
    )
    assert len(calls) == 1 and calls[0].id == reply.call_id and calls[0].backend == "vllm"
    assert calls[0].json_valid


async def test_streaming_ends_with_the_usage_chunk(inference, vllm_server: VLLMServer) -> None:
    llm, _ = inference
    deltas, finals = [], []
    async for chunk in llm.stream_complete(
        [("user", "Count from one to five.")], max_tokens=24, temperature=0.0, timeout=300
    ):
        (deltas if chunk.WhichOneof("kind") == "delta" else finals).append(chunk)
    [final] = finals
    assert len(deltas) > 1 and "".join(d.delta for d in deltas) == final.final.content
    # vLLM reports usage only on its trailing usage chunk (choices: []).
    usage = final.final.usage
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 24


async def test_cached_tokens_and_prefix_cache_metrics(inference, vllm_server: VLLMServer) -> None:
    llm, _ = inference
    server = ModelServer(BackendSpec("vllm", "vllm", vllm_server.base_url, (vllm_server.model,)))
    try:
        before = await server.prefix_cache(10)
        assert before is not None
        long_msgs = [("system", LONG_SYSTEM), ("user", "Which helper multiplies by 7?")]
        first = await llm.complete(long_msgs, max_tokens=4, temperature=0.0, timeout=300)
        second = await llm.complete(long_msgs, max_tokens=4, temperature=0.0, timeout=300)
        after = await server.prefix_cache(10)
    finally:
        await server.close()
    prompt = second.usage.prompt_tokens
    assert prompt > 3 * 128
    # The repeat is served from whole 128-token blocks of the first call's prefix.
    assert second.usage.HasField("cached_tokens")
    cached = second.usage.cached_tokens
    assert cached >= 128 and cached % 128 == 0 and cached <= prompt
    assert first.usage.HasField("cached_tokens")
    # /metrics counts the same lookups and hits.
    assert after is not None
    assert after.queried_tokens - before.queried_tokens >= first.usage.prompt_tokens + prompt
    assert after.hit_tokens - before.hit_tokens >= cached

    short = [("user", "Say yes.")]
    for _ in range(2):
        reply = await llm.complete(short, max_tokens=2, temperature=0.0, timeout=300)
        assert reply.usage.prompt_tokens < 128
        # Below one block vLLM reports 0 whether or not it could hit: unknown, not a miss.
        assert not reply.usage.HasField("cached_tokens")
