"""Request bodies per runtime (the dialect layer), checked without a server."""

from __future__ import annotations

from speckit_reflex.inference.dialects import dialect_for

SCHEMA = {"type": "object"}
MSGS = [{"role": "user", "content": "hi"}]


def _body(kind: str, endpoint: str = "", schema=SCHEMA):  # type: ignore[no-untyped-def]
    return dialect_for(kind, endpoint).chat_body("m", MSGS, 32, 0.0, 7, schema, "patch")


def test_every_runtime_gets_the_openai_json_schema_shape_and_streams_with_usage():
    for kind in ("sglang", "vllm", "llamacpp", "openai"):
        body = _body(kind)
        assert body["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": "patch", "schema": SCHEMA, "strict": True},
        }
        assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
        assert (body["max_tokens"], body["temperature"], body["seed"]) == (32, 0.0, 7)
        assert "guided_json" not in body  # removed in vLLM 0.12, ignored silently there


def test_per_runtime_extras():
    assert _body("sglang")["separate_reasoning"] is True
    assert _body("llamacpp")["cache_prompt"] is True
    assert set(_body("vllm")) == set(_body("openai"))


def test_deepseek_gets_json_object_and_no_schema_means_no_response_format():
    assert _body("openai", "https://api.deepseek.com/v1")["response_format"] == {
        "type": "json_object"
    }
    assert "response_format" not in _body("vllm", schema=None)
    assert dialect_for("sglang").generation_probe_path == "/health_generate"
    assert dialect_for("vllm").generation_probe_path is None


def test_error_bodies_flat_and_nested_and_reasoning_fields():
    d = dialect_for("vllm")
    assert (
        d.error_message({"object": "error", "message": "The request queue is full.", "code": 503})
        == "The request queue is full."
    )
    assert (
        d.error_message({"error": {"message": "The model `x` does not exist.", "code": 404}})
        == "The model `x` does not exist."
    )
    assert (
        d.reasoning_of({"reasoning": "a"}) == "a"
        and d.reasoning_of({"reasoning_content": "b"}) == "b"
    )
