"""Complete and StreamComplete against SGLang- and vLLM-shaped servers."""

from __future__ import annotations

import json

import pytest

from speckit_reflex.v1 import common_pb2

from .conftest import backends_policy, wait_for_calls

SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
    "additionalProperties": False,
}
MESSAGES = [("system", "Reply in JSON."), ("user", "Is it ok?")]


@pytest.mark.parametrize("kind", ["sglang", "vllm"])
async def test_schema_reply_validates_and_is_recorded(kind, fake_factory, adapter):
    fake = await fake_factory(kind=kind, reply='{"ok": true}', cached_tokens=8, pieces=4)
    llm, recorder, _ = await adapter(backends_policy(("primary", kind, fake)))

    reply = await llm.complete(
        MESSAGES,
        json_schema=SCHEMA,
        schema_name="answer",
        max_tokens=32,
        session_id="s-1",
        run_id="r-1",
        attempt=2,
        timeout=10,
    )

    assert reply.schema_valid is True
    assert json.loads(reply.content) == {"ok": True}
    assert (reply.backend, reply.model, reply.attempts, reply.finish_reason) == (
        "primary",
        "m",
        1,
        "stop",
    )
    # Usage counted once even though SGLang repeats it on the finish chunk.
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (12, 4)
    assert reply.usage.HasField("cached_tokens") and reply.usage.cached_tokens == 8
    assert reply.timing.HasField("ttft_ms") and 0 < reply.timing.ttft_ms <= reply.timing.latency_ms
    sent = fake.chats()[0]
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True},
    }
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert ("separate_reasoning" in sent) == (kind == "sglang")

    (event,) = await wait_for_calls(recorder, 1)
    assert event.id == reply.call_id
    assert (event.backend, event.model, event.session_id, event.run_id, event.attempt) == (
        "primary",
        "m",
        "s-1",
        "r-1",
        2,
    )
    assert (
        event.mode == common_pb2.ROUTING_MODE_REFLEX and event.role == common_pb2.ROLE_IMPLEMENTER
    )
    assert event.success and event.json_valid and event.reason == "ok"
    assert (event.prompt_tokens, event.completion_tokens, event.cached_tokens) == (12, 4, 8)
    assert event.HasField("ttft_ms")
    assert event.request["messages"][1]["content"] == "Is it ok?"
    assert event.response["content"] == '{"ok": true}'
    assert event.payload["attempts"] == 1 and event.payload["finish_reason"] == "stop"


async def test_cached_tokens_unknown_when_not_reported(fake_factory, adapter):
    fake = await fake_factory(kind="vllm", cached_tokens=None)
    llm, recorder, _ = await adapter(backends_policy(("primary", "vllm", fake)))
    reply = await llm.complete(MESSAGES, max_tokens=8, timeout=10)
    assert not reply.usage.HasField("cached_tokens")
    (event,) = await wait_for_calls(recorder, 1)
    assert not event.HasField("cached_tokens")
    assert not event.HasField("json_valid")


@pytest.mark.parametrize("kind", ["sglang", "vllm"])
async def test_stream_relays_deltas_then_final(kind, fake_factory, adapter):
    fake = await fake_factory(kind=kind, reply="hello there world", pieces=3)
    llm, _, _ = await adapter(backends_policy(("primary", kind, fake)))
    chunks = [c async for c in llm.stream_complete(MESSAGES, max_tokens=8, timeout=10)]
    deltas = [c.delta for c in chunks if c.WhichOneof("kind") == "delta"]
    final = chunks[-1].final
    assert deltas == ["hello ", "there ", "world"]
    assert final.content == "hello there world"
    assert final.usage.completion_tokens == 3 and final.usage.prompt_tokens == 12
    assert final.timing.HasField("ttft_ms")
