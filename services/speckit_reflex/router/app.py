"""Wiring of the Router service (placeholder until its core lands: every RPC
answers UNIMPLEMENTED, while server, health and reflection are real)."""

from __future__ import annotations

from grpc import aio

from speckit_reflex.runtime.bootstrap import ServiceContext
from speckit_reflex.v1 import router_pb2, router_pb2_grpc


class RouterService:
    name = "router"
    service_names = (router_pb2.DESCRIPTOR.services_by_name["Router"].full_name,)

    def register(self, server: aio.Server) -> None:
        router_pb2_grpc.add_RouterServicer_to_server(router_pb2_grpc.RouterServicer(), server)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


def build(ctx: ServiceContext) -> RouterService:
    return RouterService()
