#!/usr/bin/env python3
"""Container healthcheck: grpc.health.v1 Check of the speckit service running
in this container.

    speckit-healthcheck router|inference|patchloop|capsule

The address is the service's own SPECKIT_<SERVICE>_ADDR (a wildcard listen
host is probed on loopback); the channel carries the bearer token and TLS
settings the CLI would use (SPECKIT_AUTH_TOKEN, SPECKIT_TLS_*), so the probe
keeps working if health ever requires the token. Exit 0 only for SERVING.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from speckit_reflex.clients.channel import ChannelConfig, open_channel
from speckit_reflex.contract import DEFAULT_ADDRS

_WILDCARDS = ("0.0.0.0", "[::]", "::", "")


async def probe(service: str, timeout_s: float = 3.0) -> int:
    cfg = ChannelConfig.from_env(service)
    host, _, port = cfg.address.rpartition(":")
    if host in _WILDCARDS:
        cfg = dataclasses.replace(cfg, address=f"127.0.0.1:{port}")
    async with open_channel(cfg) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout_s
            )
        except aio.AioRpcError as exc:
            print(f"{service} at {cfg.address}: {exc.code().name} {exc.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{service} at {cfg.address}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in DEFAULT_ADDRS:
        print(f"usage: speckit-healthcheck {'|'.join(DEFAULT_ADDRS)}", file=sys.stderr)
        return 2
    return asyncio.run(probe(argv[0]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
