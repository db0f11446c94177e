"""The record of each model call: its LLMCall event, its span and its metrics.

`llm_call_event` builds the event (prompts and reply redacted of the
configured secrets); `CallAudit` adds the call's span when tracing is on,
hands the event to the sink (never blocks) and counts the call on /metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from typing import Any

from opentelemetry.trace import Status, StatusCode, Tracer, format_span_id, format_trace_id

from speckit_reflex.inference.backends import Generation
from speckit_reflex.inference.calls import CLOUD, CallRequest, CallResult
from speckit_reflex.runtime.events import new_event
from speckit_reflex.runtime.metrics import Metrics
from speckit_reflex.runtime.redact import redact_text
from speckit_reflex.v1 import common_pb2


def llm_call_event(
    req: CallRequest,
    result: CallResult,
    gens: list[Generation],
    success: bool,
    reason: str,
    *,
    secrets: tuple[str, ...],
    policy_hash: str,
) -> common_pb2.Event:
    """The LLMCall event of one call (its id is the call's)."""
    last = gens[-1] if gens else None
    params: dict[str, Any] = {
        "max_tokens": req.max_tokens,
        "backend": req.backend,
        "model": req.model,
    }
    if req.temperature is not None:
        params["temperature"] = req.temperature
    if req.seed is not None:
        params["seed"] = req.seed
    if req.json_schema:
        params["schema_name"] = req.schema_name
        params["json_schema"] = req.json_schema
    request = {
        "messages": [
            {"role": m["role"], "content": redact_text(m["content"], secrets)} for m in req.messages
        ],
        "params": params,
    }
    response = {
        "content": redact_text(last.content, secrets) if last else "",
        "reasoning": redact_text(last.reasoning_text, secrets) if last else "",
        "finish_reason": result.finish_reason,
    }
    # The seed's LLMCall field: why this call is a fallback (the Router's
    # reason, or the adapter's failover), null when it is none.
    fallback_reason = req.fallback_reason or (
        "failover " + result.failover_text() if result.failovers else None
    )
    payload = {
        "fallback_reason": fallback_reason,
        "finish_reason": result.finish_reason,
        "attempts": result.attempts,
        "failovers": [{"backend": b, "reason": r} for b, r in result.failovers],
        "decision_id": req.decision_id,
        "validation_error": result.validation_error,
        "schema": bool(req.json_schema),
    }
    ev = new_event(
        common_pb2.EVENT_TYPE_LLM_CALL,
        role=req.role,
        # A call the cloud answered is a cloud call, whatever mode the caller
        # claimed: the Router's budget counts LLMCall events of mode CLOUD.
        mode=common_pb2.ROUTING_MODE_CLOUD if result.backend == CLOUD else req.mode,
        model=result.model or req.model,
        backend=result.backend,
        session_id=req.session_id,
        run_id=req.run_id,
        attempt=req.attempt,
        latency_ms=result.latency_ms,
        ttft_ms=result.ttft_ms,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        cached_tokens=result.cached_tokens,
        tokens_per_s=result.tokens_per_s,
        # A call that got no reply (timeout, cooling down, refused) is an
        # error, not a schema failure: json_valid stays unset.
        json_valid=result.schema_valid if req.json_schema and result.finish_reason else None,
        success=success,
        reason=redact_text(reason, secrets),
        is_fallback=fallback_reason is not None,
        policy_hash=policy_hash,
        request=request,
        response=response,
        payload=payload,
    )
    ev.id = result.call_id
    return ev


class CallAudit:
    """Records each call: the LLMCall event to `emit`, a span, metrics."""

    def __init__(
        self,
        emit: Callable[[common_pb2.Event], None],
        *,
        secrets: tuple[str, ...],
        policy_hash: str,
        known_models: Collection[str],
        tracer: Tracer | None = None,
        metrics: Metrics | None = None,
    ):
        self._emit = emit
        self._secrets = secrets
        self._policy_hash = policy_hash
        # Metric labels name only models of the policy: a caller's model name
        # (or a server's echo of it) would put caller text on the
        # unauthenticated /metrics and grow the series without bound.
        self._known_models = frozenset(known_models)
        self._tracer = tracer
        self._metrics = metrics

    def record(
        self,
        req: CallRequest,
        result: CallResult,
        gens: list[Generation],
        success: bool,
        reason: str,
    ) -> None:
        """Build the LLMCall event and hand it to the sink (never blocks)."""
        ev = llm_call_event(
            req,
            result,
            gens,
            success,
            reason,
            secrets=self._secrets,
            policy_hash=self._policy_hash,
        )
        if self._tracer is not None:
            self._trace(self._tracer, ev, req, result, success)
        self._emit(ev)
        if self._metrics is not None:
            self._count(self._metrics, req, result, success, reason)

    @staticmethod
    def _trace(
        tracer: Tracer, ev: common_pb2.Event, req: CallRequest, result: CallResult, success: bool
    ) -> None:
        """The call's span, made once its outcome is known (a span held open
        across the generator's yields would leak its context into the caller);
        its times are the call's own. The LLMCall event carries its ids."""
        end_ns = time.time_ns()
        span = tracer.start_span(
            "inference.model_call",
            start_time=end_ns - int(result.latency_ms * 1e6),
            attributes={
                "speckit.call_id": result.call_id,
                "speckit.backend": result.backend,
                "speckit.model": ev.model,
                "speckit.decision_id": req.decision_id,
                "speckit.attempts": result.attempts,
                "speckit.schema_valid": result.schema_valid,
                "speckit.prompt_tokens": result.prompt_tokens,
                "speckit.completion_tokens": result.completion_tokens,
                "speckit.outcome": ev.reason,
                "speckit.failovers": result.failover_text(),
            },
        )
        if result.ttft_ms is not None:
            span.set_attribute("speckit.ttft_ms", result.ttft_ms)
        if not success:
            span.set_status(Status(StatusCode.ERROR, ev.reason))
        span.end(end_time=end_ns)
        ctx = span.get_span_context()
        if ctx.is_valid and ctx.trace_flags.sampled:
            ev.trace_id, ev.span_id = format_trace_id(ctx.trace_id), format_span_id(ctx.span_id)

    def _count(
        self, m: Metrics, req: CallRequest, result: CallResult, success: bool, reason: str
    ) -> None:
        backend = result.backend or "none"
        named = [n for n in (result.model, req.model) if n]
        model = next((n for n in named if n in self._known_models), "other" if named else "none")
        if success:
            outcome = "ok"
        elif reason == "cancelled":
            outcome = "cancelled"
        elif result.backend and req.json_schema and not result.schema_valid:
            outcome = "schema_invalid"
        else:
            outcome = "error"
        valid = ("true" if result.schema_valid else "false") if req.json_schema else "none"
        m.model_calls(backend, model, outcome, valid).inc()
        m.model_seconds(backend, model).observe(result.latency_ms / 1000)
        if result.ttft_ms is not None:
            m.model_ttft(backend, model).observe(result.ttft_ms / 1000)
        m.model_tokens(backend, model, "prompt").inc(result.prompt_tokens)
        m.model_tokens(backend, model, "completion").inc(result.completion_tokens)
        if result.cached_tokens:
            m.model_tokens(backend, model, "cached").inc(result.cached_tokens)
