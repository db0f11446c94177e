"""The gRPC server runtime every service shares.

A service is a `GrpcService`: it registers its servicer on a server, may start
background work, and closes its resources. The runtime adds what every server
has: the error interceptor, optional token auth and TLS, grpc.health.v1,
reflection, message-size limits, and a graceful stop on SIGTERM (health flips
to NOT_SERVING first, then in-flight RPCs get `grace_s` to finish).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from speckit_reflex.runtime.interceptors import DomainErrorInterceptor, TokenAuthInterceptor
from speckit_reflex.runtime.listen import check_listen_address
from speckit_reflex.runtime.metrics import Metrics, RpcMetricsInterceptor
from speckit_reflex.runtime.settings import RuntimeSettings
from speckit_reflex.runtime.tracing import Tracing

log = logging.getLogger("speckit.server")


class GrpcService(Protocol):
    """What a service package's app hands the runtime."""

    #: short name: "router", "inference", "patchloop" or "capsule"
    name: str
    #: fully-qualified gRPC service names, for health and reflection
    service_names: tuple[str, ...]

    def register(self, server: aio.Server) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


@dataclass
class RunningServer:
    service: GrpcService
    server: aio.Server
    port: int
    health: health.aio.HealthServicer
    address: str = ""
    stopped: asyncio.Event = field(default_factory=asyncio.Event)

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.service.service_names):
            await self.health.set(name, status)

    async def stop(self, grace: float) -> None:
        """Flip health to NOT_SERVING, let in-flight RPCs finish, close the service."""
        if self.stopped.is_set():
            return
        self.stopped.set()
        await self.set_serving(False)
        await self.server.stop(grace)
        await self.service.close()


def server_options(settings: RuntimeSettings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]


def _credentials(settings: RuntimeSettings) -> grpc.ServerCredentials | None:
    if not settings.tls_cert:
        return None
    key = Path(settings.tls_key).read_bytes()
    cert = Path(settings.tls_cert).read_bytes()
    client_ca = Path(settings.tls_client_ca).read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


class InsecureListenRefused(Exception):
    """A non-loopback listen address without a token or TLS, and no --insecure."""


def is_loopback(addr: str) -> bool:
    """True when only this host can reach `addr` (a loopback IP, localhost, a unix socket)."""
    if addr.startswith(("unix:", "unix-abstract:")):
        return True
    host = addr.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name or a wildcard: reachable from elsewhere
        return False


def check_exposure(name: str, addr: str, settings: RuntimeSettings, insecure: bool) -> None:
    """Refuse to serve the network without a token or TLS, unless told to."""
    if insecure or settings.auth_token or settings.tls_cert or is_loopback(addr):
        return
    raise InsecureListenRefused(
        f"{name}: refusing to listen on non-loopback {addr} without SPECKIT_AUTH_TOKEN or TLS "
        "(SPECKIT_TLS_CERT/KEY); set one, or pass --insecure to serve unauthenticated plaintext"
    )


async def create_server(
    service: GrpcService,
    addr: str,
    settings: RuntimeSettings,
    *,
    insecure: bool = False,
    metrics: Metrics | None = None,
    tracing: Tracing | None = None,
) -> RunningServer:
    """Build, bind and start a server for `service` at `addr` ("host:0" picks a port).

    A non-loopback `addr` needs a token or TLS unless `insecure` is set.
    """
    check_exposure(service.name, addr, settings, insecure)
    check_listen_address(addr, service.name)
    interceptors: list[aio.ServerInterceptor] = []
    if metrics is not None:
        # Outermost, so refusals by auth and validation are counted too.
        interceptors.append(RpcMetricsInterceptor(metrics, service.name))
    if tracing is not None:
        # Before auth: a refused call is still a span of its caller's trace.
        interceptors.append(tracing.server_interceptor())
    if settings.auth_token:
        interceptors.append(TokenAuthInterceptor(settings.auth_token))
    interceptors.append(DomainErrorInterceptor())
    server = aio.server(interceptors=interceptors, options=server_options(settings))
    service.register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            *service.service_names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    creds = _credentials(settings)
    try:
        port = server.add_secure_port(addr, creds) if creds else server.add_insecure_port(addr)
    except RuntimeError:  # grpcio >= 1.60 raises instead of returning 0
        port = 0
    if port == 0:
        raise OSError(f"{service.name}: cannot listen on {addr}")
    await service.start()
    await server.start()
    host = addr.rsplit(":", 1)[0]
    running = RunningServer(service, server, port, health_servicer, address=f"{host}:{port}")
    await running.set_serving(True)
    log.info("serving", extra={"fields": {"service": service.name, "address": running.address}})
    return running


async def serve_until_signal(
    servers: list[RunningServer],
    grace: float,
    before_stop: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Block until SIGTERM/SIGINT, then stop every server gracefully.

    `before_stop` runs first: a front end (the OpenAI endpoint) that calls
    these servers drains its requests while they still answer.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waiters = [asyncio.create_task(s.server.wait_for_termination()) for s in servers]
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait([stopper, *waiters], return_when=asyncio.FIRST_COMPLETED)
    log.info("stopping", extra={"fields": {"grace_s": grace}})
    if before_stop is not None:
        await before_stop()
    # All health statuses flip before any server stops accepting work.
    for s in servers:
        await s.set_serving(False)
    await asyncio.gather(*(s.stop(grace) for s in servers))
    for t in [stopper, *waiters]:
        t.cancel()
    log.info("stopped")
