"""gRPC transport of the Inference service: proto in, one core call, proto out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from grpc import aio

from speckit_reflex.inference.calls import CallRequest, CallResult
from speckit_reflex.inference.core import InferenceCore
from speckit_reflex.inference.health import BackendStatus
from speckit_reflex.inference.identity import ModelIdentity
from speckit_reflex.runtime.validate import Items, Range, Rules, Text, check_message
from speckit_reflex.v1 import common_pb2, inference_pb2, inference_pb2_grpc

# Bounds of a completion request; runtime.validate adds NUL, enum, finite
# number and default length checks on every field.
MAX_MESSAGES = 256
MAX_CONTENT_CHARS = 1_000_000
MAX_TOKENS = 32_768
# The schema's own limits (size, depth, enum items: inference.validation)
# judge it in the core, which records the refusal; this bound only keeps
# the text to what a message can carry.
MAX_SCHEMA_CHARS = 1_000_000
BACKEND: Rules = {"backend": Text(128)}


def complete_rules(max_validation_retries: int) -> Rules:
    """CompleteRequest's rules. A request may lower the policy's validation
    retry bound, never raise it: each retry is another upstream generation."""
    return {
        "backend": Text(128),
        "model": Text(256),
        "messages": Items(MAX_MESSAGES, required=True),
        "messages.role": Text(16, choices=frozenset({"system", "user", "assistant"})),
        "messages.content": Text(MAX_CONTENT_CHARS),
        "max_tokens": Range(0, MAX_TOKENS),
        "temperature": Range(0, 2),
        "json_schema": Text(MAX_SCHEMA_CHARS),
        "schema_name": Text(64),
        "max_validation_retries": Range(0, max_validation_retries),
        "session_id": Text(256),
        "run_id": Text(128),
        "decision_id": Text(128),
        "attempt": Range(0, 1_000_000),
    }


DEADLINE_MARGIN_S = 0.02


def _deadline(context: aio.ServicerContext[Any, Any]) -> float | None:
    """The caller's deadline as event-loop time (None when the call has none)."""

    # grpc.aio answers None when the call has no deadline (its stubs say float).
    remaining: float | None = context.time_remaining()
    if remaining is None:
        return None
    # A little early, so the adapter answers DEADLINE_EXCEEDED with its reason
    # (and records it) before gRPC cancels the handler.
    return asyncio.get_running_loop().time() + remaining - DEADLINE_MARGIN_S


def call_request(req: inference_pb2.CompleteRequest) -> CallRequest:
    """The transport-free request."""
    return CallRequest(
        messages=[{"role": m.role, "content": m.content} for m in req.messages],
        backend=req.backend,
        model=req.model,
        max_tokens=req.max_tokens,
        temperature=req.temperature if req.HasField("temperature") else None,
        seed=req.seed if req.HasField("seed") else None,
        json_schema=req.json_schema,
        schema_name=req.schema_name,
        max_validation_retries=req.max_validation_retries
        if req.HasField("max_validation_retries")
        else None,
        mode=req.mode,
        role=req.role,
        session_id=req.session_id,
        run_id=req.run_id,
        decision_id=req.decision_id,
        attempt=req.attempt,
        fallback_reason=req.fallback_reason,
    )


def complete_reply(r: CallResult) -> inference_pb2.CompleteReply:
    usage = common_pb2.Usage(prompt_tokens=r.prompt_tokens, completion_tokens=r.completion_tokens)
    if r.cached_tokens is not None:
        usage.cached_tokens = r.cached_tokens
    timing = common_pb2.Timing(latency_ms=r.latency_ms, tokens_per_s=r.tokens_per_s)
    if r.ttft_ms is not None:
        timing.ttft_ms = r.ttft_ms
    return inference_pb2.CompleteReply(
        content=r.content,
        schema_valid=r.schema_valid,
        attempts=r.attempts,
        finish_reason=r.finish_reason,
        backend=r.backend,
        model=r.model,
        usage=usage,
        timing=timing,
        validation_error=r.validation_error,
        failovers=[inference_pb2.Failover(backend=b, reason=why) for b, why in r.failovers],
        call_id=r.call_id,
    )


def identity_proto(i: ModelIdentity) -> inference_pb2.ModelIdentity:
    return inference_pb2.ModelIdentity(
        key=i.key, weights=i.weights, build=i.build, digest=i.digest, source=i.source
    )


def backend_health(s: BackendStatus) -> inference_pb2.BackendHealth:
    msg = inference_pb2.BackendHealth(
        backend=s.backend,
        kind=s.kind,
        endpoint=s.endpoint,
        model=s.model,
        healthy=s.healthy,
        reachable=s.reachable,
        model_listed=s.model_listed,
        generation_ok=s.generation_ok,
        reason=s.reason,
        probe_latency_ms=s.probe_latency_ms,
        cooling_down=s.cooling_down,
        identity=identity_proto(s.identity),
    )
    if s.checked_at:
        msg.checked_at.FromNanoseconds(int(s.checked_at * 1e9))
    return msg


class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    def __init__(self, core: InferenceCore):
        self._core = core
        self._complete_rules = complete_rules(core.config.max_validation_retries)

    async def ListModels(
        self,
        request: inference_pb2.ListModelsRequest,
        context: aio.ServicerContext[
            inference_pb2.ListModelsRequest, inference_pb2.ListModelsReply
        ],
    ) -> inference_pb2.ListModelsReply:
        check_message(request, BACKEND)
        cards, unreachable = await self._core.list_models(request.backend)
        return inference_pb2.ListModelsReply(
            models=[
                inference_pb2.ModelInfo(
                    id=c.id,
                    backend=c.backend,
                    owned_by=c.owned_by,
                    max_model_len=c.max_model_len,
                    identity=identity_proto(c.identity),
                )
                for c in cards
            ],
            unreachable=[backend_health(s) for s in unreachable],
        )

    async def Health(
        self,
        request: inference_pb2.HealthRequest,
        context: aio.ServicerContext[inference_pb2.HealthRequest, inference_pb2.HealthReply],
    ) -> inference_pb2.HealthReply:
        check_message(request, BACKEND)
        statuses = await self._core.health(request.backend, request.refresh)
        return inference_pb2.HealthReply(backends=[backend_health(s) for s in statuses])

    async def Complete(
        self,
        request: inference_pb2.CompleteRequest,
        context: aio.ServicerContext[inference_pb2.CompleteRequest, inference_pb2.CompleteReply],
    ) -> inference_pb2.CompleteReply:
        check_message(request, self._complete_rules)
        result = await self._core.complete(call_request(request), _deadline(context))
        return complete_reply(result)

    async def StreamComplete(
        self,
        request: inference_pb2.CompleteRequest,
        context: aio.ServicerContext[inference_pb2.CompleteRequest, inference_pb2.CompleteChunk],
    ) -> AsyncIterator[inference_pb2.CompleteChunk]:
        check_message(request, self._complete_rules)
        async for item in self._core.stream(call_request(request), _deadline(context)):
            if isinstance(item, str):
                yield inference_pb2.CompleteChunk(delta=item)
            else:
                yield inference_pb2.CompleteChunk(final=complete_reply(item))
