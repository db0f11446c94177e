"""One model call as the adapter sees it, transport-free: the request
(`CallRequest`, built by the servicer from Complete/StreamComplete) and its
result (`CallResult`: the reply and what was measured)."""

from __future__ import annotations

from dataclasses import dataclass, field

from speckit_reflex.v1 import common_pb2

# The adapter's name of the policy's cloud backend.
CLOUD = "cloud"


@dataclass(frozen=True)
class CallRequest:
    """One Complete/StreamComplete request, transport-free."""

    messages: list[dict[str, str]]
    backend: str = ""
    model: str = ""
    max_tokens: int = 0
    temperature: float | None = None
    seed: int | None = None
    json_schema: str = ""
    schema_name: str = ""
    max_validation_retries: int | None = None
    mode: int = common_pb2.ROUTING_MODE_UNSPECIFIED
    role: int = common_pb2.ROLE_UNSPECIFIED
    session_id: str = ""
    run_id: str = ""
    decision_id: str = ""
    attempt: int = 0
    fallback_reason: str = ""


@dataclass
class CallResult:
    """The reply of one call, with what was measured."""

    call_id: str
    content: str = ""
    schema_valid: bool = False
    attempts: int = 0
    finish_reason: str = ""
    backend: str = ""
    model: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: None = the server did not report it (unknown, not zero)
    cached_tokens: int | None = None
    ttft_ms: float | None = None
    latency_ms: float = 0.0
    tokens_per_s: float = 0.0
    validation_error: str = ""
    failovers: list[tuple[str, str]] = field(default_factory=list)

    def failover_text(self) -> str:
        """The backends passed over and why: "a=timeout, b=cooling_down"."""
        return ", ".join(f"{b}={r}" for b, r in self.failovers)
