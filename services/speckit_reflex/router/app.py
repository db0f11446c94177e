"""Wiring of the Router service: caches, engine, evidence, background refresh."""

from __future__ import annotations

import time

from grpc import aio

from speckit_reflex.router.caches import RouterCaches
from speckit_reflex.router.core import Router
from speckit_reflex.router.engine import RoutingEngine
from speckit_reflex.router.evidence import DecisionRecorder
from speckit_reflex.router.refresher import (
    CacheRefresher,
    CapsuleUsageSource,
    CapsuleVerdictSource,
    InferenceHealthSource,
)
from speckit_reflex.router.servicer import RouterServicer
from speckit_reflex.runtime.bootstrap import ServiceContext
from speckit_reflex.runtime.events import EventSink
from speckit_reflex.runtime.metrics import Metrics, watch_event_sink
from speckit_reflex.v1 import router_pb2, router_pb2_grpc

VERDICT_STATUSES = ("pass", "fail", "not_judged", "unknown")


class RouterService:
    """The Router as the runtime runs it (see runtime.server.GrpcService)."""

    name = "router"
    service_names = (router_pb2.DESCRIPTOR.services_by_name["Router"].full_name,)

    def __init__(
        self,
        router: Router,
        refresher: CacheRefresher,
        events: EventSink,
        flush_timeout_s: float = 5.0,
    ):
        self.router = router
        self.refresher = refresher
        self.events = events
        # Queued decision events get this long to reach Capsule at shutdown.
        self.flush_timeout_s = flush_timeout_s

    def register(self, server: aio.Server) -> None:
        router_pb2_grpc.add_RouterServicer_to_server(RouterServicer(self.router), server)

    async def start(self) -> None:
        self.events.start()
        await self.refresher.start()

    async def close(self) -> None:
        await self.refresher.close()
        await self.events.close(self.flush_timeout_s)


def build(ctx: ServiceContext) -> RouterService:
    """Build the Router from the context's policy and peer channels."""
    loaded = ctx.policy
    policy = loaded.policy
    caches = RouterCaches()
    events = ctx.event_sink("router", capacity=policy.inference.event_buffer)
    router = Router(
        RoutingEngine(loaded, caches),
        DecisionRecorder(events.emit),
        loaded,
        metrics=ctx.metrics,
        tracer=ctx.tracer,
    )
    budget = policy.budget
    capped = bool(budget.cloud_max_calls or budget.cloud_max_tokens)
    refresher = CacheRefresher(
        caches,
        health=InferenceHealthSource(lambda: ctx.channel("inference")),
        verdicts=CapsuleVerdictSource(
            lambda: ctx.channel("capsule"),
            policy.routing.verdicts.window,
            policy.routing.verdicts.min_samples,
        ),
        usage=CapsuleUsageSource(lambda: ctx.channel("capsule"), budget.window) if capped else None,
        models=policy.routing.reflex.chain,
        health_interval_s=policy.routing.health.probe_interval_s,
        verdict_interval_s=policy.routing.verdicts.refresh_s,
    )
    if ctx.metrics is not None:
        watch_event_sink(ctx.metrics, "router", events)
        watch_verdicts(
            ctx.metrics, caches, policy.routing.reflex.chain, policy.routing.verdicts.stale_after_s
        )
    return RouterService(router, refresher, events, flush_timeout_s=min(5.0, ctx.settings.grace_s))


def verdict_status(caches: RouterCaches, model: str, now: float, stale_after_s: float) -> str:
    """The verdict the Router acts on for `model`: pass, fail, or unknown when
    missing or stale (the Router never routes reflex on unknown); the verdict
    on the weights the model's first reporting backend serves."""
    verdict = caches.verdict_of(model, caches.identities_of(model)[0])
    if verdict is None or now - verdict.fetched_at > stale_after_s:
        return "unknown"
    return "pass" if verdict.passed else "fail"


def watch_verdicts(
    metrics: Metrics, caches: RouterCaches, models: list[str], stale_after_s: float
) -> None:
    """speckit_model_verdict{model,status}: 1 for each chain model's current status, 0 for the others."""

    def samples() -> list[tuple[tuple[str, str], float]]:
        now = time.time()
        out: list[tuple[tuple[str, str], float]] = []
        for model in models:
            current = verdict_status(caches, model, now, stale_after_s)
            out.extend(((model, status), float(status == current)) for status in VERDICT_STATUSES)
        return out

    metrics.state(
        "speckit_model_verdict",
        "Bakeoff verdict the Router holds per chain model (1 = current status)",
        ["model", "status"],
    ).add(samples)
