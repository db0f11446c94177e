"""The real `openai` Python client against the endpoint: models, a
schema-valid reply, a stream with its usage chunk, a pinned model, and the
RoutingDecision and LLMCall events each call leaves in Capsule."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest

from speckit_reflex.v1 import common_pb2

from .conftest import CLOUD_MODEL, LOCAL_MODEL, SCHEMA, TOKEN, Stack

DECISION, LLM_CALL = common_pb2.EVENT_TYPE_ROUTING_DECISION, common_pb2.EVENT_TYPE_LLM_CALL
README = Path(__file__).resolve().parents[2] / "README.md"
RESPONSE_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True},
}


def client(stack: Stack, key: str = TOKEN) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=stack.base_url, api_key=key, max_retries=0, timeout=30)


async def test_models_lists_auto_the_reflex_chain_and_the_cloud_model(stack: Stack) -> None:
    page = await client(stack).models.list()
    assert [(m.id, m.owned_by) for m in page.data] == [
        ("speckit/auto", "speckit"),
        (LOCAL_MODEL, "local"),
        (CLOUD_MODEL, "cloud"),
    ]
    one = await client(stack).models.retrieve(LOCAL_MODEL)
    assert one.id == LOCAL_MODEL
    with pytest.raises(openai.NotFoundError):
        await client(stack).models.retrieve("nope")


async def test_auto_gives_a_schema_valid_reply_and_both_events_are_in_capsule(stack: Stack) -> None:
    raw = await client(stack).chat.completions.with_raw_response.create(
        model="speckit/auto",
        messages=[{"role": "user", "content": "6 x 7?"}],
        response_format=RESPONSE_FORMAT,
        max_tokens=64,
        temperature=0,
        user="agent-7",
    )
    completion = raw.parse()
    reply = json.loads(completion.choices[0].message.content)
    jsonschema.validate(reply, SCHEMA)
    assert reply == {"answer": 42}
    assert completion.model == LOCAL_MODEL and completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens == 12 and completion.usage.total_tokens > 12
    assert raw.headers["x-speckit-route"] == f"reflex:{LOCAL_MODEL}@local"
    assert raw.headers["x-speckit-verdict-waived"] == "true"
    # The model server got the schema as response_format.
    sent = stack.local.chats()[-1]
    assert sent["response_format"]["json_schema"]["schema"] == SCHEMA
    events = await stack.events(completion.id, {DECISION, LLM_CALL})
    (decision,) = [e for e in events if e.type == DECISION]
    (call,) = [e for e in events if e.type == LLM_CALL]
    assert (decision.role, decision.stage, decision.mode) == (
        common_pb2.ROLE_IMPLEMENTER,
        common_pb2.STAGE_IMPLEMENT,
        common_pb2.ROUTING_MODE_REFLEX,
    )
    assert decision.session_id == "agent-7" and decision.payload["verdict_waived"] is True
    assert decision.id == raw.headers["x-speckit-decision-id"]
    assert (call.model, call.backend, call.json_valid, call.session_id) == (
        LOCAL_MODEL,
        "local",
        True,
        "agent-7",
    )
    assert call.payload["decision_id"] == decision.id


async def test_a_stream_arrives_in_chunks_with_a_usage_chunk_and_is_recorded(stack: Stack) -> None:
    stack.local.reply = "The answer is forty-two."
    stack.local.pieces = 4
    stream = await client(stack).chat.completions.create(
        model="speckit/auto",
        messages=[{"role": "user", "content": "6 x 7?"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    contents = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert "".join(contents) == "The answer is forty-two." and len(contents) == 4
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finals == ["stop"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None and last.usage.completion_tokens == 4
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    events = await stack.events(chunks[0].id, {DECISION, LLM_CALL})
    (call,) = [e for e in events if e.type == LLM_CALL]
    assert call.HasField("ttft_ms") and call.completion_tokens == 4


async def test_a_stream_without_include_usage_has_no_usage_chunk(stack: Stack) -> None:
    stream = await client(stack).chat.completions.create(
        model="speckit/auto", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = [c async for c in stream]
    assert all(c.usage is None and c.choices for c in chunks)


async def test_a_schema_bound_stream_sends_only_the_validated_reply(stack: Stack) -> None:
    stack.local.replies = ['{"answer": "not a number"}', '{"answer": 5}']  # the first is rejected
    stream = await client(stack).chat.completions.create(
        model="speckit/auto",
        messages=[{"role": "user", "content": "2+3?"}],
        stream=True,
        response_format=RESPONSE_FORMAT,
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert json.loads(text) == {"answer": 5}


async def test_a_concrete_model_pins_the_route(stack: Stack) -> None:
    raw = await client(stack).chat.completions.with_raw_response.create(
        model=CLOUD_MODEL,
        messages=[{"role": "user", "content": "hard one"}],
        response_format=RESPONSE_FORMAT,
    )
    completion = raw.parse()
    assert json.loads(completion.choices[0].message.content) == {"answer": 7}
    assert raw.headers["x-speckit-route"] == f"cloud:{CLOUD_MODEL}@cloud"
    assert stack.cloud.authorizations[-1] == "Bearer sk-testcloudkey0123456789abcdef"
    assert stack.local.chats() == []
    events = await stack.events(completion.id, {DECISION, LLM_CALL})
    assert {e.mode for e in events if e.type in (DECISION, LLM_CALL)} == {
        common_pb2.ROUTING_MODE_CLOUD
    }


async def test_local_only_refuses_the_cloud_with_403(stack: Stack) -> None:
    with pytest.raises(openai.PermissionDeniedError) as info:
        await client(stack).chat.completions.create(
            model=CLOUD_MODEL,
            messages=[{"role": "user", "content": "x"}],
            extra_headers={"x-speckit-local-only": "true"},
        )
    assert info.value.code == "local_only_forbids_cloud"
    assert stack.cloud.chats() == []


@pytest.mark.parametrize("budget", [{"cloud_max_calls": 1}])
async def test_a_spent_cloud_budget_is_429_insufficient_quota(stack: Stack) -> None:
    """The Router's ROUTE_REFUSED (routing_reason budget_exhausted) read from
    its ErrorInfo becomes OpenAI's quota error; nothing reaches the cloud."""
    first = await client(stack).chat.completions.create(
        model=CLOUD_MODEL, messages=[{"role": "user", "content": "x"}]
    )
    # The Router counts cloud calls from Capsule: once the call is recorded
    # there and the Router has refreshed, the one call the budget allows is spent.
    await stack.events(first.id, {LLM_CALL})
    await stack.router.refresher.refresh_usage()
    with pytest.raises(openai.RateLimitError) as info:
        await client(stack).chat.completions.create(
            model=CLOUD_MODEL, messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.status_code == 429 and info.value.code == "budget_exhausted"
    assert info.value.type == "insufficient_quota"
    assert len(stack.cloud.chats()) == 1


async def test_an_unknown_model_is_404_model_not_found(stack: Stack) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await client(stack).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.code == "model_not_found" and info.value.param == "model"


async def test_a_wrong_or_missing_key_is_401(stack: Stack) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        await client(stack, key="wrong").models.list()
    assert info.value.code == "invalid_api_key"
    async with httpx.AsyncClient() as http:  # no Authorization header at all
        bare = await http.post(f"{stack.base_url}/chat/completions", json={"model": "speckit/auto"})
    assert bare.status_code == 401 and bare.json()["error"]["code"] == "invalid_api_key"


async def test_a_reply_that_never_validates_is_502_not_an_empty_200(stack: Stack) -> None:
    stack.local.reply = "sorry, no JSON today"
    with pytest.raises(openai.InternalServerError) as info:
        await client(stack).chat.completions.create(
            model="speckit/auto",
            messages=[{"role": "user", "content": "x"}],
            response_format=RESPONSE_FORMAT,
        )
    assert info.value.status_code == 502 and info.value.code == "invalid_model_output"


async def test_an_error_mid_stream_reaches_the_client_as_an_error(stack: Stack) -> None:
    stack.local.chat_mode = "midstream_error"
    stack.local.pieces = 4
    stream = await client(stack).chat.completions.create(
        model="speckit/auto", messages=[{"role": "user", "content": "x"}], stream=True
    )
    with pytest.raises(openai.APIError) as info:
        async for _ in stream:
            pass
    assert "inference" in str(info.value)


async def test_the_readme_example_runs_as_written(stack: Stack) -> None:
    """The README's `openai` snippet, pointed at this endpoint and its token."""
    readme = await asyncio.to_thread(README.read_text)
    (snippet,) = re.findall(r"```python\n(from openai import OpenAI\n.*?)```", readme, re.S)
    assert 'base_url="http://127.0.0.1:50055/v1", api_key="unused"' in snippet
    code = snippet.replace("http://127.0.0.1:50055/v1", stack.base_url).replace(
        'api_key="unused"', f'api_key="{TOKEN}"'
    )
    stack.local.reply = '{"prime": true}'
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        await asyncio.to_thread(exec, compile(code, "README.md", "exec"), {})
    printed = out.getvalue()
    assert (
        printed.startswith('{"prime": true}\n{"prime": true}') and "completion_tokens=" in printed
    )
