"""What SGLang's and vLLM's own pydantic models say about our wire traffic.

Imported both in the project's environment (SGLang's protocol module) and in
the separate vLLM environment (tests/vllm/vllm_oracle.py), so it uses pydantic
only. Each runtime is described by a `Runtime` holding its model classes; the
functions below check a request body against it and build the response
shapes its server sends, serialised the way its serving code does
(SGLang: `model_dump_json()` with nulls kept; vLLM: `exclude_unset`, and
`exclude_none` on the usage chunk).
"""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel


@dataclass(frozen=True)
class Runtime:
    name: str
    request: type[BaseModel]
    response: type[BaseModel]
    chunk: type[BaseModel]
    stream_choice: type[BaseModel]
    choice: type[BaseModel]
    delta: type[BaseModel]
    message: type[BaseModel]
    usage: type[BaseModel]
    prompt_details: type[BaseModel]
    model_list: type[BaseModel]
    model_card: type[BaseModel]
    error: type[BaseModel]
    error_info: type[BaseModel] | None  # vLLM nests {"error": {...}}; SGLang is flat


def import_sglang_protocol() -> types.ModuleType:
    """sglang.srt.entrypoints.openai.protocol without running sglang/__init__.py
    (which imports torch): register a bare package whose path is the installed one."""
    import importlib.util

    if "sglang" not in sys.modules:
        spec = importlib.util.find_spec("sglang")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(
                "sglang is not installed (scripts/bootstrap.sh installs it with --no-deps)"
            )
        pkg = types.ModuleType("sglang")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["sglang"] = pkg
    import sglang.srt.entrypoints.openai.protocol as protocol

    return protocol


def sglang_runtime() -> Runtime:
    p = import_sglang_protocol()
    return Runtime(
        "sglang",
        p.ChatCompletionRequest,
        p.ChatCompletionResponse,
        p.ChatCompletionStreamResponse,
        p.ChatCompletionResponseStreamChoice,
        p.ChatCompletionResponseChoice,
        p.DeltaMessage,
        p.ChatMessage,
        p.UsageInfo,
        p.PromptTokensDetails,
        p.ModelList,
        p.ModelCard,
        p.ErrorResponse,
        None,
    )


def vllm_runtime() -> Runtime:
    # vllm 0.32 layout: chat models under openai/, shared ones under serve/engine/.
    from vllm.entrypoints.openai.chat_completion import protocol as c
    from vllm.entrypoints.serve.engine import protocol as e

    return Runtime(
        "vllm",
        c.ChatCompletionRequest,
        c.ChatCompletionResponse,
        c.ChatCompletionStreamResponse,
        c.ChatCompletionResponseStreamChoice,
        c.ChatCompletionResponseChoice,
        c.DeltaMessage,
        c.ChatMessage,
        e.UsageInfo,
        e.PromptTokenUsageInfo,
        e.ModelList,
        e.ModelCard,
        e.ErrorResponse,
        e.ErrorInfo,
    )


# -- requests -------------------------------------------------------------------------


def ignored_keys(model: BaseModel, data: Any, path: str = "") -> list[str]:
    """Keys of `data` the validated `model` has no field for: both servers drop
    them (SGLang silently, vLLM with a debug log), so a constraint sent under a
    wrong name would be lost without an error."""
    if not isinstance(data, dict):
        return []
    known: dict[str, str] = {}
    for name, info in type(model).model_fields.items():
        known[name] = name
        if info.alias:
            known[info.alias] = name
    out: list[str] = []
    for key, value in data.items():
        if key not in known:
            out.append(f"{path}{key}")
            continue
        # __dict__, not getattr: reading a deprecated field (max_tokens) warns.
        out.extend(_ignored_below(model.__dict__.get(known[key]), value, f"{path}{key}."))
    return out


def _ignored_below(attr: Any, value: Any, path: str) -> list[str]:
    if isinstance(attr, BaseModel):
        return ignored_keys(attr, value, path)
    if isinstance(attr, list) and isinstance(value, list):
        out: list[str] = []
        for i, (a, v) in enumerate(zip(attr, value, strict=False)):
            out.extend(_ignored_below(a, v, f"{path}{i}."))
        return out
    return []


def check_request(rt: Runtime, body: dict[str, Any]) -> dict[str, Any]:
    """{"ok": bool, "error": str, "ignored": [dotted keys]} for one request body."""
    try:
        # A copy: SGLang's validators fill in the dict they are given.
        req = rt.request.model_validate(json.loads(json.dumps(body)))
    except Exception as exc:
        # Whatever validation raises is a rejection (vLLM's validators raise
        # its own VLLMValidationError, which is not a ValueError).
        return {"ok": False, "error": str(exc), "ignored": []}
    return {"ok": True, "error": "", "ignored": ignored_keys(req, body)}


# -- responses ------------------------------------------------------------------------


def _usage(rt: Runtime, prompt: int, completion: int, cached: int | None) -> BaseModel:
    details = None if cached is None else rt.prompt_details(cached_tokens=cached)
    return rt.usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=details,
    )


def _dump(rt: Runtime, obj: BaseModel, *, chunk: bool = False, usage_chunk: bool = False) -> str:
    # vLLM's stream chunks only drop unset (and, on the usage chunk, null)
    # fields; its whole replies, listings and errors are plain model_dump().
    if rt.name == "vllm" and chunk:
        return obj.model_dump_json(exclude_unset=True, exclude_none=usage_chunk)
    return obj.model_dump_json()


def shapes(
    rt: Runtime,
    *,
    model: str,
    pieces: list[str],
    prompt: int,
    completion: int,
    cached: int | None,
    finish: str = "stop",
) -> dict[str, Any]:
    """The bodies a server of this runtime sends for one reply made of `pieces`.

    stream: the SSE `data:` payloads in order (role chunk, content chunks, the
    finish chunk, the usage-only chunk, [DONE]), as with include_usage.
    whole: the non-streamed reply. models: GET /v1/models. error: an HTTP
    error body. stream_error: the event a server sends when it fails mid-stream.
    """
    rid = "chatcmpl-contract"

    def make_chunk(
        delta: BaseModel | None,
        finish_reason: str | None = None,
        usage: BaseModel | None = None,
        choices: bool = True,
    ) -> BaseModel:
        kw: dict[str, Any] = {
            "id": rid,
            "model": model,
            "choices": [rt.stream_choice(index=0, delta=delta, finish_reason=finish_reason)]
            if choices
            else [],
        }
        if usage is not None:
            kw["usage"] = usage
        return rt.chunk(**kw)

    usage = _usage(rt, prompt, completion, cached)
    stream = [_dump(rt, chunk=True, obj=make_chunk(rt.delta(role="assistant", content="")))]
    stream += [_dump(rt, chunk=True, obj=make_chunk(rt.delta(content=p))) for p in pieces[:-1]]
    if rt.name == "sglang":
        # SGLang: last content, then a separate finish chunk that carries usage too.
        stream.append(_dump(rt, chunk=True, obj=make_chunk(rt.delta(content=pieces[-1]))))
        stream.append(_dump(rt, chunk=True, obj=make_chunk(rt.delta(), finish, usage=usage)))
    else:
        # vLLM: finish_reason rides on the last content delta.
        stream.append(_dump(rt, chunk=True, obj=make_chunk(rt.delta(content=pieces[-1]), finish)))
    stream.append(
        _dump(rt, chunk=True, obj=make_chunk(None, usage=usage, choices=False), usage_chunk=True)
    )
    stream.append("[DONE]")

    whole = rt.response(
        id=rid,
        model=model,
        usage=usage,
        choices=[
            rt.choice(
                index=0,
                message=rt.message(role="assistant", content="".join(pieces)),
                finish_reason=finish,
            )
        ],
    )
    models = rt.model_list(data=[rt.model_card(id=model, root=model, max_model_len=2048)])
    if rt.error_info is not None:
        error = rt.error(
            error=rt.error_info(
                message="bad request from contract", type="BadRequestError", code=400
            )
        )
    else:
        error = rt.error(message="bad request from contract", type="BadRequestError", code=400)
    error_json = error.model_dump_json()
    # Mid-stream failures: both wrap the error body under "error".
    stream_error = json.dumps(
        {"error": json.loads(error_json)["error"] if rt.error_info else json.loads(error_json)}
    )
    return {
        "stream": stream,
        "whole": _dump(rt, whole),
        "models": _dump(rt, models),
        "error": error_json,
        "stream_error": stream_error,
    }
