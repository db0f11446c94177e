"""The Inference Adapter's logic: pick backends, call them, judge, record.

One call = one `LLMCall` event (audit.py). Backends are tried in policy
order, each in a turn of its own (turn.py): a generation judged under the
request's JSON schema and retried up to the bound. A backend that fails
(connection error, 5xx, 503 overload, timeout, a failed probe, a cut stream)
is logged with its reason, cooled down, and the next one tried. An
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
from contextlib import aclosing
from dataclasses import dataclass, field

from opentelemetry.trace import Tracer

from speckit_reflex.errors import (
    DeadlineExceeded,
    DomainError,
    FailedPrecondition,
    NotFound,
    Unavailable,
)
from speckit_reflex.inference.audit import CallAudit
from speckit_reflex.inference.backends import (
    BackendSpec,
    Generation,
    ModelServer,
    UpstreamFailure,
    resolve_api_key,
)
from speckit_reflex.inference.calls import CLOUD, CallRequest, CallResult
from speckit_reflex.inference.health import BackendStatus, HealthBook
from speckit_reflex.inference.identity import ModelIdentity
from speckit_reflex.inference.turn import BackendTurn
from speckit_reflex.inference.validation import ReplyCheck, SchemaCheck
from speckit_reflex.policy import LoadedPolicy
from speckit_reflex.runtime.metrics import Metrics
from speckit_reflex.v1 import common_pb2

log = logging.getLogger("speckit.inference")

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
class ModelCard:
    id: str
    backend: str
    owned_by: str = ""
    max_model_len: int = 0
    identity: ModelIdentity = field(default_factory=ModelIdentity)


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
        self.config = config
        self._servers = servers
        self._health = health
        self._schemas = schemas
        self._local_names = tuple(s.name for s in config.local)
        self._audit = CallAudit(
            emit,
            secrets=config.secrets,
            policy_hash=config.policy_hash,
            known_models={m for s in (*config.local, config.cloud) for m in s.models}
            | {config.primary_model},
            tracer=tracer,
            metrics=metrics,
        )

    # -- listing and health ---------------------------------------------------

    def _named(self, backend: str, include_cloud: bool) -> list[str]:
        if backend:
            if backend == CLOUD:
                return [CLOUD]
            if backend not in self._local_names:
                raise self._unknown_backend(backend)
            return [backend]
        return [
            *self._local_names,
            *([CLOUD] if include_cloud and not self.config.local_only else []),
        ]

    def _unknown_backend(self, backend: str) -> NotFound:
        return NotFound(
            f"unknown_backend: {backend!r}; configured: {', '.join(self._local_names)}, cloud",
            reason=common_pb2.ERROR_REASON_UNKNOWN_BACKEND,
            metadata={"backend": backend},
        )

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
                raise self._unknown_backend(req.backend)
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
                turn = BackendTurn(
                    server,
                    model,
                    req,
                    schema=schema,
                    validator=validator,
                    retries=retries,
                    timeout_s=self._timeout_s(server),
                    generations=gens,
                )
                try:
                    async with aclosing(turn.deltas(deadline)) as deltas:
                        async for delta in deltas:
                            if result.ttft_ms is None:
                                result.ttft_ms = (time.perf_counter() - t0) * 1000
                            if relay:
                                relayed = True
                                yield delta
                except UpstreamFailure as exc:
                    self._backend_failed(result, server, exc, deadline, relayed)
                    continue
                self._finish(result, turn)
                call_reason = self._outcome_reason(result, turn.check)
                result.latency_ms = (time.perf_counter() - t0) * 1000
                self._sum_usage(result, gens)
                usable = turn.check is None or turn.check.valid
                # Built after the reply is on its way: audit never delays it.
                loop.call_soon(self._audit.record, req, result, gens, usable, call_reason)
                recorded = True
                yield result
                return
            raise self._exhausted(result, candidates[0][1] if candidates else "")
        except DomainError as exc:
            result.latency_ms = (time.perf_counter() - t0) * 1000
            self._sum_usage(result, gens)
            self._audit.record(req, result, gens, False, exc.message)
            raise
        except asyncio.CancelledError:
            if not recorded:  # a cancel while the final chunk goes out is not a second call
                result.latency_ms = (time.perf_counter() - t0) * 1000
                self._sum_usage(result, gens)
                self._audit.record(req, result, gens, False, "cancelled")
            raise

    def _timeout_s(self, server: ModelServer) -> float:
        """One generation's time limit on `server` (the policy's, per kind)."""
        cfg = self.config
        return cfg.cloud_timeout_s if server.spec.is_cloud else cfg.local_timeout_s

    def _backend_failed(
        self,
        result: CallResult,
        server: ModelServer,
        exc: UpstreamFailure,
        deadline: float | None,
        relayed: bool,
    ) -> None:
        """Fail over from `server` (cooled down, the failover recorded), unless
        the caller's deadline has passed or part of its reply went out."""
        if deadline is not None and asyncio.get_running_loop().time() >= deadline:
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
        tried = result.failover_text()
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

    def _finish(self, result: CallResult, turn: BackendTurn) -> None:
        """The reply of the turn that answered; without a valid one, no content
        when the policy requires a schema."""
        server, gen, check = turn.server, turn.last, turn.check
        result.backend = server.name
        result.model = gen.model or turn.model
        result.finish_reason = gen.finish_reason
        completion = int((gen.usage or {}).get("completion_tokens") or 0)
        if gen.first_token_at is not None and completion > 1:
            # Decode speed: tokens after the first over the time since the first.
            span = time.perf_counter() - gen.first_token_at
            result.tokens_per_s = (completion - 1) / span if span > 0 else 0.0
        if check is None:
            result.content = gen.content
            return
        result.schema_valid = check.valid
        result.validation_error = "" if check.valid else check.error
        keep = check.valid or not self.config.json_schema_required
        result.content = gen.content.strip() if check.valid else (gen.content if keep else "")

    @staticmethod
    def _outcome_reason(result: CallResult, check: ReplyCheck | None) -> str:
        parts = []
        if result.failovers:
            parts.append("failover " + result.failover_text())
        if check is not None and not check.valid:
            parts.append(f"schema_invalid {check.kind}")
        return "; ".join(parts) or "ok"

    @staticmethod
    def _sum_usage(result: CallResult, gens: list[Generation]) -> None:
        """Generations (the call's attempts) counted and their usage summed
        over every backend tried (retries cost tokens too)."""
        result.attempts = len(gens)
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
