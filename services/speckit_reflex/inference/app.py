"""Wiring of the Inference service (placeholder until its core lands: every RPC
answers UNIMPLEMENTED, while server, health and reflection are real)."""

from __future__ import annotations

from grpc import aio

from speckit_reflex.runtime.bootstrap import ServiceContext
from speckit_reflex.v1 import inference_pb2, inference_pb2_grpc


class InferenceService:
    name = "inference"
    service_names = (inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name,)

    def register(self, server: aio.Server) -> None:
        inference_pb2_grpc.add_InferenceServicer_to_server(inference_pb2_grpc.InferenceServicer(), server)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


def build(ctx: ServiceContext) -> InferenceService:
    return InferenceService()
