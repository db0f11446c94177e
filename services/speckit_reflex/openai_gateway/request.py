"""A chat completion request body, every field hostile until checked here.

Fields this endpoint cannot honour are refused rather than silently dropped
(`n` > 1, tools, `stop`, logprobs); fields that only tune sampling or tag the
request (`top_p`, penalties, `metadata`, ...) are accepted and ignored, as
OpenAI-compatible servers commonly do, since clients send them by default.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from speckit_reflex.openai_gateway.errors import ApiError, invalid

AUTO_MODEL = "speckit/auto"
MAX_MESSAGES = 256
MAX_CONTENT_CHARS = 1_000_000  # per message
MAX_TOTAL_CHARS = 2_000_000
MAX_TOKENS_CAP = 32_768
MAX_MODEL_CHARS = 256
MAX_SCHEMA_CHARS = 64 * 1024
MAX_SCHEMA_NAME = 64
MAX_USER_CHARS = 256
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_UNSUPPORTED_WHEN_SET = (
    "tools",
    "functions",
    "tool_choice",
    "function_call",
    "logprobs",
    "top_logprobs",
    "audio",
    "modalities",
    "prediction",
)


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[tuple[str, str]]
    max_tokens: int
    temperature: float | None
    seed: int | None
    stream: bool
    include_usage: bool
    json_schema: str
    schema_name: str
    session_id: str

    @property
    def auto(self) -> bool:
        return self.model == AUTO_MODEL


def _text(value: Any, param: str, limit: int, *, empty_ok: bool = True) -> str:
    if not isinstance(value, str):
        raise invalid(param, f"expected a string, got {type(value).__name__}")
    if len(value) > limit:
        raise invalid(param, f"longer than {limit} characters")
    if "\x00" in value:
        raise invalid(param, "contains a NUL character")
    if not empty_ok and not value:
        raise invalid(param, "must not be empty")
    return value


def _int(value: Any, param: str, lo: int, hi: int) -> int:
    # bool is an int in Python; JSON true is not a number.
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(param, f"expected an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise invalid(param, f"must be between {lo} and {hi} (got {value})")
    return value


def _content(value: Any, param: str) -> str:
    """A message's text: a string, or a list of text parts."""
    if isinstance(value, str):
        return _text(value, param, MAX_CONTENT_CHARS)
    if isinstance(value, list):
        parts: list[str] = []
        for i, part in enumerate(value[: MAX_MESSAGES + 1]):
            where = f"{param}[{i}]"
            if not isinstance(part, dict) or part.get("type") != "text":
                raise invalid(
                    where, 'only text parts ({"type": "text", "text": ...}) are supported'
                )
            parts.append(_text(part.get("text"), f"{where}.text", MAX_CONTENT_CHARS))
        if len(value) > MAX_MESSAGES:
            raise invalid(param, f"more than {MAX_MESSAGES} parts")
        text = "".join(parts)
        if len(text) > MAX_CONTENT_CHARS:
            raise invalid(param, f"longer than {MAX_CONTENT_CHARS} characters")
        return text
    raise invalid(param, f"expected a string or a list of text parts, got {type(value).__name__}")


def _messages(value: Any) -> list[tuple[str, str]]:
    if not isinstance(value, list):
        raise invalid("messages", "expected an array of messages")
    if not value:
        raise invalid("messages", "must contain at least one message")
    if len(value) > MAX_MESSAGES:
        raise invalid("messages", f"more than {MAX_MESSAGES} messages")
    out: list[tuple[str, str]] = []
    total = 0
    for i, m in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise invalid(where, "expected an object with role and content")
        role = m.get("role")
        if role not in _ROLES:
            raise invalid(
                f"{where}.role", f"must be one of {', '.join(_ROLES)} (got {str(role)[:40]!r})"
            )
        if m.get("tool_calls") or m.get("function_call"):
            raise invalid(f"{where}.tool_calls", "tool calls are not supported")
        text = _content(m.get("content"), f"{where}.content")
        total += len(text)
        if total > MAX_TOTAL_CHARS:
            raise invalid("messages", f"more than {MAX_TOTAL_CHARS} characters in all")
        out.append((_ROLES[role], text))
    return out


def _response_format(value: Any) -> tuple[str, str]:
    """(JSON schema text, schema name) from `response_format`; ("", "") for text."""
    if value is None:
        return "", ""
    if not isinstance(value, dict):
        raise invalid("response_format", "expected an object")
    kind = value.get("type")
    if kind == "text":
        return "", ""
    if kind == "json_object":
        return '{"type": "object"}', "json_object"
    if kind != "json_schema":
        raise invalid(
            "response_format.type",
            f"must be text, json_object or json_schema (got {str(kind)[:40]!r})",
        )
    spec = value.get("json_schema")
    if not isinstance(spec, dict):
        raise invalid("response_format.json_schema", "expected an object with name and schema")
    name = _text(
        spec.get("name", "response"),
        "response_format.json_schema.name",
        MAX_SCHEMA_NAME,
        empty_ok=False,
    )
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        raise invalid("response_format.json_schema.schema", "expected a JSON Schema object")
    text = json.dumps(schema, separators=(",", ":"))
    if len(text) > MAX_SCHEMA_CHARS:
        raise invalid(
            "response_format.json_schema.schema", f"larger than {MAX_SCHEMA_CHARS} characters"
        )
    return text, name


def parse_chat_request(body: Any, *, max_tokens_cap: int = MAX_TOKENS_CAP) -> ChatRequest:
    """A ChatRequest from a decoded JSON body, or ApiError(400) naming the field.

    No max_tokens means the model server's own default (0 on the wire).
    """
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_body")
    model = _text(body.get("model"), "model", MAX_MODEL_CHARS, empty_ok=False)
    messages = _messages(body.get("messages"))
    for name in _UNSUPPORTED_WHEN_SET:
        if body.get(name) not in (None, False, [], {}):
            raise ApiError(
                400,
                f"{name}: not supported by this endpoint",
                param=name,
                code="unsupported_parameter",
            )
    if body.get("stop") not in (None, [], ""):
        raise ApiError(
            400,
            "stop: stop sequences are not supported",
            param="stop",
            code="unsupported_parameter",
        )
    if body.get("n") is not None and _int(body["n"], "n", 1, 128) != 1:
        raise ApiError(
            400, "n: only one choice (n = 1) is supported", param="n", code="unsupported_parameter"
        )
    # max_completion_tokens is the current name; max_tokens the deprecated one.
    raw_max = body.get("max_completion_tokens", body.get("max_tokens"))
    param = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    max_tokens = 0 if raw_max is None else _int(raw_max, param, 1, max_tokens_cap)
    temperature = body.get("temperature")
    if temperature is not None:
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, (int, float))
            or not math.isfinite(temperature)
        ):
            raise invalid("temperature", "expected a number")
        if not 0 <= temperature <= 2:
            raise invalid("temperature", f"must be between 0 and 2 (got {temperature})")
        temperature = float(temperature)
    seed = body.get("seed")
    if seed is not None:
        seed = _int(seed, "seed", 0, 2**63 - 1)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise invalid("stream", "expected a boolean")
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise invalid("stream_options", "expected an object")
        if not stream:
            raise invalid("stream_options", "only allowed when stream is true")
        include_usage = options.get("include_usage", False)
        if not isinstance(include_usage, bool):
            raise invalid("stream_options.include_usage", "expected a boolean")
    schema, schema_name = _response_format(body.get("response_format"))
    user = body.get("user")
    session = "" if user is None else _text(user, "user", MAX_USER_CHARS)
    return ChatRequest(
        model,
        messages,
        max_tokens,
        temperature,
        seed,
        stream,
        include_usage,
        schema,
        schema_name,
        session,
    )
