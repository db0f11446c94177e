"""What differs between SGLang, vLLM, llama.cpp and cloud OpenAI-compatible APIs.

Everything else in the adapter speaks one shape; a `Dialect` builds the
request body (with that runtime's extras) and knows that runtime's quirks on
the way back (reasoning field names, error bodies, the generation probe).
Shapes follow each server's documented wire format (docs/runbook.md);
tests/vllm/ checks the bodies against SGLang's and vLLM's own request models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Dialect:
    """An OpenAI-compatible server flavour. Subclasses add per-runtime extras."""

    kind: str = "openai"
    #: SGLang has a native 1-token generation probe; elsewhere we send a real
    #: 1-token chat completion.
    generation_probe_path: str | None = None
    #: Prometheus counters (prompt tokens looked up, tokens found) of the
    #: server's prefix cache on /metrics; None = not exposed.
    prefix_cache_metrics: tuple[str, str] | None = None

    def chat_body(
        self,
        model: str,
        messages: list[dict[str, str]],
        max_tokens: int,
        temperature: float | None,
        seed: int | None,
        schema: dict[str, Any] | None,
        schema_name: str,
        stream: bool = True,
    ) -> dict[str, Any]:
        """A chat-completion body; a streamed one asks for usage on the stream."""
        body: dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
        if stream:
            # Only with stream=true: vLLM rejects stream_options otherwise (400),
            # where SGLang accepts it.
            body["stream_options"] = {"include_usage": True}
        if max_tokens:
            body["max_tokens"] = max_tokens
        if temperature is not None:
            body["temperature"] = temperature
        if seed is not None:
            body["seed"] = seed
        if schema is not None:
            # The OpenAI shape; vLLM removed guided_json in 0.12 and silently
            # ignores unknown fields, so this is the only form we rely on.
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": schema_name or "reply", "schema": schema, "strict": True},
            }
        self.add_extras(body, schema)
        return body

    def add_extras(self, body: dict[str, Any], schema: dict[str, Any] | None) -> None:
        """Per-runtime fields; the base dialect adds none."""
        return None

    def cached_tokens(
        self, usage: dict[str, Any] | None, timings: dict[str, Any] | None
    ) -> int | None:
        """Prompt tokens served from the prefix cache; None = not reported (unknown, not 0)."""
        details = (usage or {}).get("prompt_tokens_details")
        hit = details.get("cached_tokens") if isinstance(details, dict) else None
        if hit is None and timings and timings.get("cache_n") is not None:
            hit = timings["cache_n"]  # llama.cpp's own count
        return None if hit is None else int(hit)

    @staticmethod
    def reasoning_of(part: dict[str, Any]) -> str:
        """Reasoning text of a message or delta (vLLM renamed the field)."""
        return part.get("reasoning_content") or part.get("reasoning") or ""

    @staticmethod
    def error_message(body: Any) -> str:
        """The message of an error body, flat (SGLang) or nested (vLLM, llama.cpp)."""
        if isinstance(body, dict):
            inner = body.get("error")
            if isinstance(inner, dict):
                return str(inner.get("message") or inner)
            if isinstance(inner, str):
                return inner
            if body.get("message"):
                return str(body["message"])
        return str(body)[:300]


@dataclass(frozen=True)
class SGLangDialect(Dialect):
    kind: str = "sglang"
    # /health_generate runs a real 1-token generate inside the server.
    generation_probe_path: str | None = "/health_generate"
    prefix_cache_metrics: tuple[str, str] | None = (
        "sglang:prompt_tokens_total",
        "sglang:cached_tokens_total",
    )

    def add_extras(self, body: dict[str, Any], schema: dict[str, Any] | None) -> None:
        # Keep reasoning out of `content` so JSON there is judged on its own.
        body["separate_reasoning"] = True


@dataclass(frozen=True)
class VLLMDialect(Dialect):
    kind: str = "vllm"
    prefix_cache_metrics: tuple[str, str] | None = (
        "vllm:prefix_cache_queries",
        "vllm:prefix_cache_hits",
    )
    #: vLLM caches whole KV blocks only (128 tokens on its CPU build).
    cache_block_tokens: int = 128

    def cached_tokens(
        self, usage: dict[str, Any] | None, timings: dict[str, Any] | None
    ) -> int | None:
        hit = super().cached_tokens(usage, timings)
        # A prompt shorter than one block can never hit, so its 0 says nothing.
        if hit == 0 and int((usage or {}).get("prompt_tokens") or 0) < self.cache_block_tokens:
            return None
        return hit


@dataclass(frozen=True)
class LlamaCppDialect(Dialect):
    kind: str = "llamacpp"

    def add_extras(self, body: dict[str, Any], schema: dict[str, Any] | None) -> None:
        # Reuse the KV cache of the repeated prompt prefix (default true; explicit
        # so that a server started with another default still hits the cache).
        body["cache_prompt"] = True


@dataclass(frozen=True)
class DeepSeekDialect(Dialect):
    """DeepSeek's API accepts only `json_object` (no json_schema); the schema is
    then enforced by local validation alone."""

    def add_extras(self, body: dict[str, Any], schema: dict[str, Any] | None) -> None:
        if schema is not None:
            body["response_format"] = {"type": "json_object"}


DIALECTS: dict[str, Dialect] = {
    d.kind: d for d in (SGLangDialect(), VLLMDialect(), LlamaCppDialect(), Dialect())
}


def dialect_for(kind: str, endpoint: str = "") -> Dialect:
    """The dialect of a backend kind from the policy (and, for cloud APIs, its host)."""
    if kind == "openai" and "deepseek.com" in endpoint:
        return DeepSeekDialect()
    return DIALECTS[kind]
