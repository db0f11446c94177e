"""Wiring of the Inference service: policy in, model servers, health, core, servicer."""

from __future__ import annotations

import os
from collections.abc import Mapping

from grpc import aio

from speckit_reflex.inference.backends import ModelServer
from speckit_reflex.inference.core import AdapterConfig, InferenceCore
from speckit_reflex.inference.health import HealthBook, ProbeTiming
from speckit_reflex.inference.servicer import InferenceServicer
from speckit_reflex.inference.validation import SchemaCheck
from speckit_reflex.runtime.bootstrap import ServiceContext
from speckit_reflex.runtime.events import EventSink
from speckit_reflex.runtime.metrics import Metrics, watch_event_sink
from speckit_reflex.v1 import inference_pb2, inference_pb2_grpc


class InferenceService:
    """The Inference Adapter as a GrpcService."""

    name = "inference"
    service_names = (inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name,)

    def __init__(
        self,
        core: InferenceCore,
        servers: dict[str, ModelServer],
        health: HealthBook,
        sink: EventSink,
    ):
        self.core = core
        self.servers = servers
        self.health = health
        self.sink = sink

    def register(self, server: aio.Server) -> None:
        inference_pb2_grpc.add_InferenceServicer_to_server(InferenceServicer(self.core), server)

    async def start(self) -> None:
        self.sink.start()
        self.health.start()

    async def close(self) -> None:
        await self.health.close()
        await self.sink.close()
        for s in self.servers.values():
            await s.close()


def build(ctx: ServiceContext, environ: Mapping[str, str] | None = None) -> InferenceService:
    """Build the service from the policy; API keys come from the environment."""
    policy = ctx.policy.policy
    config = AdapterConfig.from_policy(ctx.policy, os.environ if environ is None else environ)
    servers = {s.name: ModelServer(s) for s in config.local}
    if not config.local_only:
        # Under local_only no client for the cloud exists at all (GR-009).
        servers[config.cloud.name] = ModelServer(config.cloud)
    h = policy.routing.health
    timing = ProbeTiming(
        h.probe_interval_s, h.probe_timeout_ms / 1000, h.cooldown_s, h.stale_after_s
    )
    # Only local backends are probed in the background: a cloud probe costs money.
    health = HealthBook(servers, timing, background=tuple(s.name for s in config.local))
    sink = ctx.event_sink("inference", capacity=policy.inference.event_buffer)
    core = InferenceCore(
        config, servers, health, SchemaCheck(), sink.emit, metrics=ctx.metrics, tracer=ctx.tracer
    )
    if ctx.metrics is not None:
        watch_event_sink(ctx.metrics, "inference", sink)
        watch_backends(
            ctx.metrics, health, probed=tuple(s.name for s in config.local), all_=tuple(servers)
        )
    return InferenceService(core, servers, health, sink)


def watch_backends(
    metrics: Metrics, health: HealthBook, *, probed: tuple[str, ...], all_: tuple[str, ...]
) -> None:
    """Health of the probed (local) backends and cooldown of every backend,
    from the HealthBook at scrape time."""

    def healthy() -> list[tuple[tuple[str], float]]:
        out = []
        for n in probed:
            rec = health.last_probe(n)
            out.append(((n,), float(rec is not None and rec.healthy)))
        return out

    def probed_at() -> list[tuple[tuple[str], float]]:
        return [((n,), rec.checked_at) for n in probed if (rec := health.last_probe(n)) is not None]

    metrics.state(
        "speckit_backend_healthy",
        "1 when the backend's last probe passed (0 too when never probed)",
        ["backend"],
    ).add(healthy)
    metrics.state(
        "speckit_backend_last_probe_timestamp_seconds",
        "Unix time of the backend's last probe",
        ["backend"],
    ).add(probed_at)
    metrics.state(
        "speckit_backend_cooldown_remaining_seconds",
        "Seconds until failover tries the backend again after a failed call (0 = not cooling down)",
        ["backend"],
    ).add(lambda: [((n,), health.cooldown_remaining_s(n)) for n in all_])
