"""One place that wires services: settings + policy in, running servers out.

Services start in dependency order (capsule, inference, router, patchloop) so
that a later one can reach an earlier one even when ports are chosen by the OS
(address "127.0.0.1:0" in tests): each actual address is recorded in the
context before the next service is built.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

from grpc import aio
from opentelemetry.trace import Tracer

from speckit_reflex.clients.channel import ChannelConfig, open_channel
from speckit_reflex.policy import LoadedPolicy, load_policy
from speckit_reflex.runtime.events import DeadLetters, EventSink
from speckit_reflex.runtime.metrics import Metrics, MetricsServer
from speckit_reflex.runtime.server import GrpcService, RunningServer, check_exposure, create_server
from speckit_reflex.runtime.settings import RuntimeSettings
from speckit_reflex.runtime.tracing import Tracing
from speckit_reflex.v1 import common_pb2

# Start order; each service's app module exposes build(ctx) -> GrpcService.
SERVICE_ORDER = ("capsule", "inference", "router", "patchloop")


@dataclass
class ServiceContext:
    """What a service's build() receives: settings, policy, peer channels."""

    settings: RuntimeSettings
    policy: LoadedPolicy
    addresses: dict[str, str] = field(default_factory=dict)
    #: the process's metrics; None when SPECKIT_METRICS_ADDR is unset
    metrics: Metrics | None = None
    metrics_server: MetricsServer | None = None
    #: the process's tracing; None when no OTLP endpoint is configured
    tracing: Tracing | None = None
    _channels: dict[str, aio.Channel] = field(default_factory=dict)

    @property
    def tracer(self) -> Tracer | None:
        """The tracer a core makes its spans with (None: tracing off)."""
        return self.tracing.tracer if self.tracing is not None else None

    @property
    def stamp(self) -> Callable[[common_pb2.Event], None] | None:
        """What an EventSink stamps trace ids on events with (None: tracing off)."""
        return self.tracing.stamp if self.tracing is not None else None

    def address_of(self, service: str) -> str:
        return self.addresses.get(service) or self.settings.addr_of(service)

    def channel(self, service: str) -> aio.Channel:
        """A shared channel to a peer service (created on first use)."""
        if service not in self._channels:
            s = self.settings
            cfg = ChannelConfig(
                address=self.address_of(service),
                token=s.auth_token,
                tls_ca=s.tls_ca,
                tls_cert=s.tls_cert if s.tls_client_ca else "",
                tls_key=s.tls_key if s.tls_client_ca else "",
                max_message_bytes=s.max_message_bytes,
            )
            self._channels[service] = open_channel(
                cfg, self.tracing.client_interceptors() if self.tracing is not None else ()
            )
        return self._channels[service]

    def event_sink(self, service: str, capacity: int) -> EventSink:
        """The service's sink of events to Capsule; what Capsule refuses for
        good lands in SPECKIT_HOME/dead-letter/<service>-events.jsonl."""
        path = self.settings.home / "dead-letter" / f"{service}-events.jsonl"
        return EventSink(
            lambda: self.channel("capsule"),
            capacity=capacity,
            stamp=self.stamp,
            dead_letters=DeadLetters(path, service),
        )

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()
        if self.metrics_server is not None:
            await self.metrics_server.close()
            self.metrics_server = None
        if self.tracing is not None:
            self.tracing.shutdown()
            self.tracing = None


def build_service(name: str, ctx: ServiceContext) -> GrpcService:
    if name not in SERVICE_ORDER:
        raise ValueError(f"unknown service {name!r}; expected one of {', '.join(SERVICE_ORDER)}")
    module = importlib.import_module(f"speckit_reflex.{name}.app")
    # Each service's app module defines build(ctx) -> GrpcService.
    build: Callable[[ServiceContext], GrpcService] = module.build
    return build(ctx)


async def start_services(
    names: list[str],
    settings: RuntimeSettings,
    policy: LoadedPolicy | None = None,
    *,
    insecure: bool = False,
    tracing: Tracing | None = None,
) -> tuple[ServiceContext, list[RunningServer]]:
    """Start the named services (in dependency order) and return them running.

    `insecure` allows a non-loopback address without a token or TLS.
    `tracing` defaults to OTLP export as the OTEL_* environment says (or none).
    """
    policy = policy or load_policy(settings.policy or None)
    if tracing is None:
        tracing = Tracing.from_env(
            names[0] if len(names) == 1 else "reflex"
        )  # none: serve openai alone
    ctx = ServiceContext(
        settings=settings,
        policy=policy,
        metrics=Metrics() if settings.metrics_addr else None,
        tracing=tracing,
    )
    for name in names:
        check_exposure(name, settings.addr_of(name), settings, insecure)
    running: list[RunningServer] = []
    try:
        for name in SERVICE_ORDER:
            if name not in names:
                continue
            service = build_service(name, ctx)
            server = await create_server(
                service,
                settings.addr_of(name),
                settings,
                insecure=insecure,
                metrics=ctx.metrics,
                tracing=ctx.tracing,
            )
            ctx.addresses[name] = server.address
            running.append(server)
        if ctx.metrics is not None:
            # One endpoint for every service this process runs.
            ctx.metrics_server = MetricsServer(ctx.metrics, settings.metrics_addr)
            await ctx.metrics_server.start()
    except BaseException:
        for s in running:
            await s.stop(0)
        await ctx.close()
        raise
    return ctx, running
