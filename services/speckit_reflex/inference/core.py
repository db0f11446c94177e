"""The Inference Adapter's logic: pick backends, call them, judge, record.

One call = one `LLMCall` event. Backends are tried in policy order; a backend
that fails (connection error, 5xx, 503 overload, timeout, a failed probe, a
cut stream) is logged with its reason, cooled down, and the next one tried.
A reply under a JSON schema is judged locally and retried up to the bound; an
unvalidated reply is never returned as content when the policy requires a
schema. The cloud backend is refused outright under `local_only` (GR-009),
before any connection exists.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.trace import Status, StatusCode, Tracer, format_span_id, format_trace_id

from speckit_reflex.errors import (
    DeadlineExceeded,
    DomainError,
    FailedPrecondition,
    NotFound,
    Unavailable,
)
from speckit_reflex.inference.backends import (
    BackendSpec,
    Generation,
    ModelServer,
    UpstreamFailure,
    resolve_api_key,
)
from speckit_reflex.inference.health import BackendStatus, HealthBook
from speckit_reflex.inference.identity import ModelIdentity
from speckit_reflex.inference.validation import SchemaCheck, Verdict, judge_reply
from speckit_reflex.policy import LoadedPolicy
from speckit_reflex.runtime.events import new_event
from speckit_reflex.runtime.metrics import Metrics
from speckit_reflex.runtime.redact import redact_text
from speckit_reflex.v1 import common_pb2

log = logging.getLogger("speckit.inference")

CLOUD = "cloud"
LOCAL_ONLY_REASON = "local_only_forbids_cloud"
# A cloud call without its API key is refused here, never sent: it could only
# fail, and it must not count as a cloud attempt.
CLOUD_KEY_MISSING = "cloud_key_missing"


@dataclass(frozen=True)
class AdapterConfig:
    """The parts of the policy the adapter uses, resolved once at start."""

    local: tuple[BackendSpec, ...]
    cloud: BackendSpec
    local_only: bool
    primary_model: str
    json_schema_required: bool
    local_timeout_s: float
    cloud_timeout_s: float
    max_validation_retries: int
    policy_hash: str = ""
    # The environment variable the policy names for the cloud key.
    cloud_key_env: str = ""

    @classmethod
    def from_policy(cls, loaded: LoadedPolicy, environ: Mapping[str, str]) -> AdapterConfig:
        """Backends in policy order; API keys read from the environment variables the policy names."""
        p = loaded.policy
        reflex, cloud = p.routing.reflex, p.routing.cloud
        local = tuple(
            BackendSpec(
                b.name, b.kind, b.endpoint, tuple(b.models), resolve_api_key(b.api_key_env, environ)
            )
            for b in reflex.effective_backends()
        )
        cloud_key = "" if p.privacy.local_only else resolve_api_key(cloud.api_key_env, environ)
        return cls(
            local=local,
            cloud=BackendSpec(
                CLOUD, cloud.kind, cloud.endpoint, (cloud.model,), cloud_key, is_cloud=True
            ),
            local_only=p.privacy.local_only,
            primary_model=reflex.chain[0],
            json_schema_required=reflex.json_schema_required,
            local_timeout_s=reflex.timeout_ms / 1000,
            cloud_timeout_s=cloud.timeout_ms / 1000,
            max_validation_retries=p.inference.max_validation_retries,
            policy_hash=loaded.sha256,
            cloud_key_env=cloud.api_key_env,
        )

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(s.api_key for s in (*self.local, self.cloud) if len(s.api_key) >= 6)


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


@dataclass(frozen=True)
class ModelCard:
    id: str
    backend: str
    owned_by: str = ""
    max_model_len: int = 0
    identity: ModelIdentity = ModelIdentity()


def _retry_hint(verdict: Verdict) -> dict[str, str]:
    # Appended after the original prompt so the server's prefix cache still hits.
    return {
        "role": "user",
        "content": f"Your previous reply was rejected ({verdict.kind}). Reply with exactly one JSON "
        "document that matches the schema, with no other text.",
    }


class InferenceCore:
    """Completions with failover, schema enforcement, health and audit."""

    def __init__(
        self,
        config: AdapterConfig,
        servers: dict[str, ModelServer],
        health: HealthBook,
        schemas: SchemaCheck,
        emit: Callable[[common_pb2.Event], None],
        metrics: Metrics | None = None,
        tracer: Tracer | None = None,
    ):
        self._tracer = tracer
        self.config = config
        self._servers = servers
        self._health = health
        self._schemas = schemas
        self._emit = emit
        self._metrics = metrics
        self._local_names = tuple(s.name for s in config.local)
        # Metric labels name only models of the policy: a caller's model name
        # (or a server's echo of it) would put caller text on the
        # unauthenticated /metrics and grow the series without bound.
        self._known_models = frozenset(
            m for s in (*config.local, config.cloud) for m in s.models
        ) | {config.primary_model}

    # -- listing and health ---------------------------------------------------

    def _named(self, backend: str, include_cloud: bool) -> list[str]:
        if backend:
            if backend == CLOUD:
                return [CLOUD]
            if backend not in self._local_names:
                raise NotFound(
                    f"unknown_backend: {backend!r}; configured: {', '.join(self._local_names)}, cloud",
                    reason=common_pb2.ERROR_REASON_UNKNOWN_BACKEND,
                    metadata={"backend": backend},
                )
            return [backend]
        return [
            *self._local_names,
            *([CLOUD] if include_cloud and not self.config.local_only else []),
        ]

    def _local_only_status(self) -> BackendStatus:
        c = self.config.cloud
        return BackendStatus(
            backend=CLOUD,
            kind=c.kind,
            endpoint=c.endpoint,
            model=c.models[0],
            reason=LOCAL_ONLY_REASON,
            checked_at=time.time(),
        )

    async def health(self, backend: str = "", refresh: bool = False) -> list[BackendStatus]:
        """Health of one backend, or of every local backend (cloud only when named)."""
        names = self._named(backend, include_cloud=False)
        out: list[BackendStatus] = []
        for name in names:
            if name == CLOUD and self.config.local_only:
                out.append(self._local_only_status())
        probing = [n for n in names if n in self._servers]
        out.extend(await asyncio.gather(*(self._health.status(n, refresh) for n in probing)))
        return out

    async def list_models(self, backend: str = "") -> tuple[list[ModelCard], list[BackendStatus]]:
        """Models each backend serves, plus the backends that could not be listed."""
        names = self._named(backend, include_cloud=True)
        if names == [CLOUD] and self.config.local_only:
            return [], [self._local_only_status()]
        servers = [self._servers[n] for n in names if n in self._servers]
        results = await asyncio.gather(
            *(s.list_models(self._health.probe_timeout_s) for s in servers), return_exceptions=True
        )
        cards: list[ModelCard] = []
        unreachable: list[BackendStatus] = []
        for server, res in zip(servers, results, strict=True):
            if isinstance(res, UpstreamFailure):
                spec = server.spec
                unreachable.append(
                    BackendStatus(
                        backend=spec.name,
                        kind=spec.kind,
                        endpoint=spec.endpoint,
                        reason=f"unreachable: {res}",
                        checked_at=time.time(),
                    )
                )
                continue
            if isinstance(res, BaseException):
                raise res
            for c in res:
                # The weights as of the last health probe of this backend, if it saw this model.
                known = self._health.fresh(server.name)
                identity = (
                    known.identity
                    if known is not None and known.model == c["id"]
                    else ModelIdentity()
                )
                cards.append(
                    ModelCard(
                        str(c["id"]),
                        server.name,
                        str(c.get("owned_by") or ""),
                        int(c.get("max_model_len") or 0),
                        identity,
                    )
                )
        return cards, unreachable

    # -- completion ---------------------------------------------------------------

    def _candidates(self, req: CallRequest) -> tuple[list[tuple[ModelServer, str]], bool]:
        """(server, model) pairs to try in order, and whether failover applies."""
        cfg = self.config
        wants_cloud = req.backend == CLOUD or (
            not req.backend and req.mode == common_pb2.ROUTING_MODE_CLOUD
        )
        if wants_cloud:
            if cfg.local_only:
                raise FailedPrecondition(
                    f"{LOCAL_ONLY_REASON}: privacy.local_only forbids calls to the cloud backend",
                    reason=common_pb2.ERROR_REASON_LOCAL_ONLY_FORBIDS_CLOUD,
                )
            if not cfg.cloud.api_key:
                raise FailedPrecondition(
                    f"{CLOUD_KEY_MISSING}: {cfg.cloud_key_env} is not set; set it to the cloud "
                    "API key to allow cloud calls (none was sent)",
                    reason=common_pb2.ERROR_REASON_CLOUD_KEY_MISSING,
                    metadata={"env": cfg.cloud_key_env},
                )
            return [(self._servers[CLOUD], req.model or cfg.cloud.models[0])], False
        if req.backend:
            if req.backend not in self._local_names:
                raise NotFound(
                    f"unknown_backend: {req.backend!r}; configured: {', '.join(self._local_names)}, cloud",
                    reason=common_pb2.ERROR_REASON_UNKNOWN_BACKEND,
                    metadata={"backend": req.backend},
                )
            server = self._servers[req.backend]
            return [
                (
                    server,
                    req.model
                    or (server.spec.models[0] if server.spec.models else cfg.primary_model),
                )
            ], False
        model = req.model or cfg.primary_model
        found = [(self._servers[s.name], model) for s in cfg.local if model in s.models]
        if not found:
            raise NotFound(
                f"no_backend_for_model: no local backend serves model {model!r}",
                reason=common_pb2.ERROR_REASON_NO_BACKEND_FOR_MODEL,
                metadata={"model": model},
            )
        return found, True

    def _skip_reason(self, server: ModelServer, model: str) -> str:
        """Why failover passes over a backend without calling it ("" = try it)."""
        name = server.name
        if self._health.cooling_down(name):
            return "cooling_down"
        rec = self._health.fresh(name)
        if rec is None:
            return ""
        if rec.reachable and rec.listed_models and model not in rec.listed_models:
            return "model_not_listed"
        if not rec.healthy and (not rec.model_listed or rec.model == model):
            return f"unhealthy ({rec.reason})"
        return ""

    async def complete(self, req: CallRequest, deadline: float | None = None) -> CallResult:
        """A whole reply. `deadline` is event-loop time (None = the policy's timeouts only)."""
        result: CallResult | None = None
        # Run the generator to its end (rather than leaving it at its last
        # yield) so no finaliser task is scheduled per call.
        async for item in self.stream(req, deadline, relay=False):
            if isinstance(item, CallResult):
                result = item
        assert result is not None, "stream() ends with a CallResult or raises"
        return result

    async def stream(
        self, req: CallRequest, deadline: float | None = None, *, relay: bool = True
    ) -> AsyncIterator[str | CallResult]:
        """Content deltas as they arrive, then the CallResult.

        With a schema, deltas of a rejected attempt have already been relayed
        when a retry starts: only the final CallResult is authoritative. With
        `relay`, failover stops once a delta went out (the client already has
        part of one backend's reply), and the call fails instead.
        """
        t0 = time.perf_counter()
        loop = asyncio.get_running_loop()
        result = CallResult(call_id=str(uuid.uuid4()))
        gens: list[Generation] = []
        recorded = False
        try:
            schema, validator = (
                self._schemas.compile(req.json_schema) if req.json_schema else (None, None)
            )
            candidates, failover = self._candidates(req)
            retries = (
                self.config.max_validation_retries
                if req.max_validation_retries is None
                else req.max_validation_retries
            )
            relayed = False
            for server, model in candidates:
                if failover:
                    skip = self._skip_reason(server, model)
                    if skip:
                        self._record_failover(result, server.name, skip, "skipped")
                        continue
                per_call = (
                    self.config.cloud_timeout_s
                    if server.spec.is_cloud
                    else self.config.local_timeout_s
                )
                messages = list(req.messages)
                verdict: Verdict | None = None
                try:
                    for _ in range(retries + 1):
                        now = loop.time()
                        attempt_deadline = (
                            now + per_call if deadline is None else min(deadline, now + per_call)
                        )
                        gen = Generation()
                        gens.append(gen)
                        result.attempts += 1
                        body = server.dialect.chat_body(
                            model,
                            messages,
                            req.max_tokens,
                            req.temperature,
                            req.seed,
                            schema,
                            req.schema_name,
                        )
                        async for delta in server.stream_chat(body, attempt_deadline, gen):
                            if result.ttft_ms is None:
                                result.ttft_ms = (time.perf_counter() - t0) * 1000
                            if relay:
                                relayed = True
                                yield delta
                        if validator is None:
                            break
                        verdict = judge_reply(
                            gen.content, gen.reasoning_text, gen.finish_reason, validator
                        )
                        if verdict.valid:
                            break
                        messages = [*req.messages, _retry_hint(verdict)]
                except UpstreamFailure as exc:
                    if deadline is not None and loop.time() >= deadline:
                        raise DeadlineExceeded(
                            f"deadline_exceeded: the caller's deadline passed waiting for {server.name} "
                            f"({exc.reason})",
                            metadata={"backend": server.name},
                        ) from None
                    self._health.mark_failed(server.name)
                    self._record_failover(result, server.name, exc.reason, exc.detail)
                    if relayed:
                        raise Unavailable(
                            f"stream_broken: {server.name} failed mid-stream ({exc.reason}) "
                            "after part of its reply was relayed",
                            reason=common_pb2.ERROR_REASON_STREAM_BROKEN,
                            metadata={"backend": server.name},
                        ) from None
                    continue
                self._finish(result, server, model, gens[-1], verdict)
                call_reason = self._outcome_reason(result, verdict)
                result.latency_ms = (time.perf_counter() - t0) * 1000
                self._sum_usage(result, gens)
                usable = verdict is None or verdict.valid
                # Built after the reply is on its way: audit never delays it.
                loop.call_soon(self._record_call, req, result, gens, usable, call_reason)
                recorded = True
                yield result
                return
            raise self._exhausted(result, candidates[0][1] if candidates else "")
        except DomainError as exc:
            result.latency_ms = (time.perf_counter() - t0) * 1000
            self._sum_usage(result, gens)
            self._record_call(req, result, gens, False, exc.message)
            raise
        except asyncio.CancelledError:
            if not recorded:  # a cancel while the final chunk goes out is not a second call
                result.latency_ms = (time.perf_counter() - t0) * 1000
                self._sum_usage(result, gens)
                self._record_call(req, result, gens, False, "cancelled")
            raise

    def _record_failover(self, result: CallResult, backend: str, reason: str, detail: str) -> None:
        result.failovers.append((backend, reason))
        # GR-005: no silent degradation.
        log.warning(
            "failover",
            extra={
                "fields": {
                    "call_id": result.call_id,
                    "backend": backend,
                    "reason": reason,
                    "detail": detail,
                }
            },
        )

    def _exhausted(self, result: CallResult, model: str) -> DomainError:
        tried = ", ".join(f"{b}={r}" for b, r in result.failovers)
        backends = {"backends": ",".join(dict.fromkeys(b for b, _ in result.failovers))}
        if result.failovers and all(r == "model_not_listed" for _, r in result.failovers):
            return NotFound(
                f"model_not_listed: no backend lists the model ({tried})",
                reason=common_pb2.ERROR_REASON_NO_BACKEND_FOR_MODEL,
                metadata={"model": model, **backends},
            )
        return Unavailable(
            f"all_backends_failed: {tried}",
            reason=common_pb2.ERROR_REASON_ALL_BACKENDS_FAILED,
            metadata=backends,
        )

    def _finish(
        self,
        result: CallResult,
        server: ModelServer,
        model: str,
        gen: Generation,
        verdict: Verdict | None,
    ) -> None:
        result.backend = server.name
        result.model = gen.model or model
        result.finish_reason = gen.finish_reason
        completion = int((gen.usage or {}).get("completion_tokens") or 0)
        if gen.first_token_at is not None and completion > 1:
            # Decode speed: tokens after the first over the time since the first.
            span = time.perf_counter() - gen.first_token_at
            result.tokens_per_s = (completion - 1) / span if span > 0 else 0.0
        if verdict is None:
            result.content = gen.content
            return
        result.schema_valid = verdict.valid
        result.validation_error = "" if verdict.valid else verdict.error
        keep = verdict.valid or not self.config.json_schema_required
        result.content = gen.content.strip() if verdict.valid else (gen.content if keep else "")

    @staticmethod
    def _outcome_reason(result: CallResult, verdict: Verdict | None) -> str:
        parts = []
        if result.failovers:
            parts.append("failover " + ", ".join(f"{b}={r}" for b, r in result.failovers))
        if verdict is not None and not verdict.valid:
            parts.append(f"schema_invalid {verdict.kind}")
        return "; ".join(parts) or "ok"

    @staticmethod
    def _sum_usage(result: CallResult, gens: list[Generation]) -> None:
        """Usage summed over every generation of the call (retries cost tokens too)."""
        prompt = completion = 0
        cached: int | None = None
        for g in gens:
            usage = g.usage or {}
            prompt += int(usage.get("prompt_tokens") or 0)
            completion += int(usage.get("completion_tokens") or 0)
            if g.cached_tokens is not None:
                cached = (cached or 0) + g.cached_tokens
        result.prompt_tokens, result.completion_tokens, result.cached_tokens = (
            prompt,
            completion,
            cached,
        )
        if not result.tokens_per_s and completion and result.latency_ms:
            result.tokens_per_s = completion / (result.latency_ms / 1000)

    # -- audit --------------------------------------------------------------------

    def _record_call(
        self,
        req: CallRequest,
        result: CallResult,
        gens: list[Generation],
        success: bool,
        reason: str,
    ) -> None:
        """Build the LLMCall event and hand it to the sink (never blocks)."""
        secrets = self.config.secrets
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
                {"role": m["role"], "content": redact_text(m["content"], secrets)}
                for m in req.messages
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
            "failover " + ", ".join(f"{b}={r}" for b, r in result.failovers)
            if result.failovers
            else None
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
            mode=req.mode,
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
            policy_hash=self.config.policy_hash,
            request=request,
            response=response,
            payload=payload,
        )
        ev.id = result.call_id
        if self._tracer is not None:
            self._trace_call(ev, req, result, success)
        self._emit(ev)
        if self._metrics is not None:
            self._count_call(req, result, success, reason)

    def _trace_call(
        self, ev: common_pb2.Event, req: CallRequest, result: CallResult, success: bool
    ) -> None:
        """The call's span, made once its outcome is known (a span held open
        across the generator's yields would leak its context into the caller);
        its times are the call's own. The LLMCall event carries its ids."""
        assert self._tracer is not None
        end_ns = time.time_ns()
        span = self._tracer.start_span(
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
                "speckit.failovers": ", ".join(f"{b}={r}" for b, r in result.failovers),
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

    def _count_call(self, req: CallRequest, result: CallResult, success: bool, reason: str) -> None:
        m = self._metrics
        assert m is not None
        backend = result.backend or "none"
        named = [m for m in (result.model, req.model) if m]
        model = next((m for m in named if m in self._known_models), "other" if named else "none")
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
