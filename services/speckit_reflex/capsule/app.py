"""Wiring of the Capsule service (placeholder until its core lands: every RPC
answers UNIMPLEMENTED, while server, health and reflection are real)."""

from __future__ import annotations

from grpc import aio

from speckit_reflex.runtime.bootstrap import ServiceContext
from speckit_reflex.v1 import capsule_pb2, capsule_pb2_grpc


class CapsuleService:
    name = "capsule"
    service_names = (capsule_pb2.DESCRIPTOR.services_by_name["Capsule"].full_name,)

    def register(self, server: aio.Server) -> None:
        capsule_pb2_grpc.add_CapsuleServicer_to_server(capsule_pb2_grpc.CapsuleServicer(), server)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


def build(ctx: ServiceContext) -> CapsuleService:
    return CapsuleService()
