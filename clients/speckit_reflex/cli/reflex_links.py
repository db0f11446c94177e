"""Connections of the `speckit reflex` commands to the services, through the
typed clients only; addresses, token and TLS from SPECKIT_* (ChannelConfig)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import grpc
from grpc import aio

from speckit_reflex.cli.output import rpc_error
from speckit_reflex.clients.capsule import CapsuleClient
from speckit_reflex.clients.channel import ChannelConfig, open_channel
from speckit_reflex.clients.inference import InferenceClient
from speckit_reflex.clients.patchloop import PatchLoopClient
from speckit_reflex.clients.router import RouterClient


class ServiceLinks:
    """Lazily opened channels, one per service; `async with` closes them."""

    def __init__(self, environ: dict[str, str] | None = None):
        self._environ = environ
        self._channels: dict[str, aio.Channel] = {}

    def config(self, service: str) -> ChannelConfig:
        return ChannelConfig.from_env(service, self._environ)

    def channel(self, service: str) -> aio.Channel:
        if service not in self._channels:
            self._channels[service] = open_channel(self.config(service))
        return self._channels[service]

    @property
    def capsule(self) -> CapsuleClient:
        return CapsuleClient(self.channel("capsule"))

    @property
    def inference(self) -> InferenceClient:
        return InferenceClient(self.channel("inference"))

    @property
    def router(self) -> RouterClient:
        return RouterClient(self.channel("router"))

    @property
    def patchloop(self) -> PatchLoopClient:
        return PatchLoopClient(self.channel("patchloop"))

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()

    async def __aenter__(self) -> ServiceLinks:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


@contextmanager
def reporting(service: str, links: ServiceLinks | None = None) -> Iterator[None]:
    """Turn a failed RPC into a one-line CLI error naming the service (and
    its address, from `links` or the environment)."""
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        address = links.config(service).address if links is not None else ""
        raise rpc_error(service, exc, address) from None


def run_with_links(body: Callable[[ServiceLinks], Awaitable[int]]) -> int:
    """Run one command's async body with its connections; returns its exit code."""

    async def main() -> int:
        async with ServiceLinks() as links:
            return await body(links)

    return asyncio.run(main())
