"""grpc.health.v1 checks of a speckit service, for whoever starts one and must
wait for it (the demo, benchmarks, tests)."""

from __future__ import annotations

import asyncio
import time

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc


async def is_serving(address: str, timeout_s: float = 2.0) -> bool:
    """True when the server at `address` answers SERVING for its overall status."""
    async with aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            # types-grpcio-health-checking declares HealthStub without its methods.
            reply: health_pb2.HealthCheckResponse = await stub.Check(  # type: ignore[attr-defined]
                health_pb2.HealthCheckRequest(), timeout=timeout_s
            )
        except aio.AioRpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


async def wait_serving(address: str, timeout_s: float = 30.0, interval_s: float = 0.1) -> None:
    """Wait until `address` is SERVING; TimeoutError after `timeout_s`."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if await is_serving(address, timeout_s=1.0):
            return
        await asyncio.sleep(interval_s)
    raise TimeoutError(f"{address} not serving after {timeout_s} s")
