"""Every field of a chat completion request is hostile: wrong types, sizes
and values are refused with 400 and OpenAI's error shape naming the field,
before anything is routed; and a client that leaves mid-stream does not
leave the model server generating."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from speckit_reflex.openai_gateway.app import MAX_BODY_BYTES, check_openai_exposure
from speckit_reflex.openai_gateway.request import MAX_MESSAGES, MAX_TOKENS_CAP
from speckit_reflex.runtime.server import InsecureListenRefused
from tests.waiting import eventually

from .conftest import TOKEN, Stack

OK_MESSAGES = [{"role": "user", "content": "hi"}]
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def body(**over: Any) -> dict[str, Any]:
    return {"model": "speckit/auto", "messages": OK_MESSAGES, **over}


HOSTILE = [
    ("model_missing", {"messages": OK_MESSAGES}, "model"),
    ("model_not_text", body(model=7), "model"),
    ("model_empty", body(model=""), "model"),
    ("model_too_long", body(model="m" * 257), "model"),
    ("messages_missing", {"model": "speckit/auto"}, "messages"),
    ("messages_not_list", body(messages="hi"), "messages"),
    ("messages_empty", body(messages=[]), "messages"),
    ("messages_too_many", body(messages=OK_MESSAGES * (MAX_MESSAGES + 1)), "messages"),
    ("message_not_object", body(messages=["hi"]), "messages[0]"),
    ("role_tool", body(messages=[{"role": "tool", "content": "x"}]), "messages[0].role"),
    ("role_missing", body(messages=[{"content": "x"}]), "messages[0].role"),
    ("content_number", body(messages=[{"role": "user", "content": 5}]), "messages[0].content"),
    (
        "content_image",
        body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
        "messages[0].content[0]",
    ),
    ("content_nul", body(messages=[{"role": "user", "content": "a\x00b"}]), "messages[0].content"),
    (
        "content_too_long",
        body(messages=[{"role": "user", "content": "x" * 1_000_001}]),
        "messages[0].content",
    ),
    (
        "tool_calls",
        body(messages=[{"role": "assistant", "content": "", "tool_calls": [{"id": "1"}]}]),
        "messages[0].tool_calls",
    ),
    ("max_tokens_zero", body(max_tokens=0), "max_tokens"),
    ("max_tokens_negative", body(max_tokens=-5), "max_tokens"),
    ("max_tokens_over_cap", body(max_tokens=MAX_TOKENS_CAP + 1), "max_tokens"),
    ("max_tokens_text", body(max_tokens="64"), "max_tokens"),
    ("max_tokens_bool", body(max_tokens=True), "max_tokens"),
    ("max_completion_tokens_float", body(max_completion_tokens=1.5), "max_completion_tokens"),
    ("temperature_high", body(temperature=2.5), "temperature"),
    ("temperature_text", body(temperature="hot"), "temperature"),
    ("seed_negative", body(seed=-1), "seed"),
    ("n_two", body(n=2), "n"),
    ("tools", body(tools=[{"type": "function", "function": {"name": "f"}}]), "tools"),
    ("stop", body(stop=["\n"]), "stop"),
    ("logprobs", body(logprobs=True), "logprobs"),
    ("stream_text", body(stream="yes"), "stream"),
    ("stream_options_unary", body(stream_options={"include_usage": True}), "stream_options"),
    (
        "include_usage_text",
        body(stream=True, stream_options={"include_usage": "yes"}),
        "stream_options.include_usage",
    ),
    ("format_text", body(response_format="json"), "response_format"),
    ("format_type", body(response_format={"type": "xml"}), "response_format.type"),
    (
        "schema_missing",
        body(response_format={"type": "json_schema"}),
        "response_format.json_schema",
    ),
    (
        "schema_not_object",
        body(response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": []}}),
        "response_format.json_schema.schema",
    ),
    (
        "schema_too_big",
        body(
            response_format={
                "type": "json_schema",
                "json_schema": {
                    "name": "a",
                    "schema": {"type": "object", "description": "d" * 70_000},
                },
            }
        ),
        "response_format.json_schema.schema",
    ),
    (
        "schema_name_long",
        body(
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "n" * 65, "schema": {"type": "object"}},
            }
        ),
        "response_format.json_schema.name",
    ),
    ("user_not_text", body(user=["x"]), "user"),
]


@pytest.mark.parametrize(("case", "payload", "param"), HOSTILE, ids=[c[0] for c in HOSTILE])
async def test_hostile_fields_are_400_naming_the_field(
    stack: Stack, case: str, payload: Any, param: str
) -> None:
    before = len(stack.local.chats())
    async with httpx.AsyncClient(headers=AUTH) as http:
        r = await http.post(f"{stack.base_url}/chat/completions", json=payload)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"].startswith(f"{param}: ")
    assert err["type"] == "invalid_request_error"
    assert len(stack.local.chats()) == before  # nothing reached a model


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"\xff\xfe", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_body"),
        (
            b'{"model": "speckit/auto", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
            400,
            "invalid_value",
        ),
        (b"x" * (MAX_BODY_BYTES + 1), 413, "request_too_large"),
    ],
    ids=["broken", "not_utf8", "array", "nan", "too_large"],
)
async def test_bodies_that_are_not_a_request_object(
    stack: Stack, content: bytes, status: int, code: str
) -> None:
    async with httpx.AsyncClient(headers=AUTH | {"Content-Type": "application/json"}) as http:
        r = await http.post(f"{stack.base_url}/chat/completions", content=content)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


async def test_unknown_paths_and_methods_answer_in_openai_shape(stack: Stack) -> None:
    async with httpx.AsyncClient(headers=AUTH) as http:
        missing = await http.post(f"{stack.base_url}/completions", json={})
        wrong_method = await http.get(f"{stack.base_url}/chat/completions")
    assert missing.status_code == 404 and "error" in missing.json()
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()


async def test_a_client_leaving_mid_stream_stops_the_model_call(stack: Stack) -> None:
    # 50 pieces 0.5 s apart: 25 s to the natural end, far beyond the wait below.
    stack.local.reply = "word " * 50
    stack.local.pieces = 50
    stack.local.piece_delay_s = 0.5
    async with httpx.AsyncClient(headers=AUTH, timeout=30) as http:
        async with http.stream(
            "POST", f"{stack.base_url}/chat/completions", json=body(stream=True)
        ) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: ") and "word" in line:
                    break  # leave after the first content chunk
    await eventually(
        lambda: stack.local.open_requests,
        lambda n: n == 0,
        what="the model server's request closed after the client left",
        timeout_s=10,
    )


@pytest.mark.parametrize(
    ("addr", "token", "insecure", "refused"),
    [
        ("0.0.0.0:8000", "", False, True),
        ("[::]:8000", "", False, True),
        ("0.0.0.0:8000", "t", False, False),
        ("0.0.0.0:8000", "", True, False),
        ("127.0.0.1:8000", "", False, False),
        ("localhost:8000", "", False, False),
    ],
)
def test_non_loopback_without_a_token_needs_insecure(
    addr: str, token: str, insecure: bool, refused: bool
) -> None:
    if refused:
        with pytest.raises(InsecureListenRefused, match="SPECKIT_AUTH_TOKEN"):
            check_openai_exposure(addr, token, insecure)
    else:
        check_openai_exposure(addr, token, insecure)
