"""Wiring of the PatchLoop service (placeholder until its core lands: every RPC
answers UNIMPLEMENTED, while server, health and reflection are real)."""

from __future__ import annotations

from grpc import aio

from speckit_reflex.runtime.bootstrap import ServiceContext
from speckit_reflex.v1 import patchloop_pb2, patchloop_pb2_grpc


class PatchLoopService:
    name = "patchloop"
    service_names = (patchloop_pb2.DESCRIPTOR.services_by_name["PatchLoop"].full_name,)

    def register(self, server: aio.Server) -> None:
        patchloop_pb2_grpc.add_PatchLoopServicer_to_server(patchloop_pb2_grpc.PatchLoopServicer(), server)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


def build(ctx: ServiceContext) -> PatchLoopService:
    return PatchLoopService()
