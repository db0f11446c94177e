"""Wiring of the Capsule service: engine and store from the settings, the core
with the policy's capture mode and thresholds, the servicer on the server."""

from __future__ import annotations

from grpc import aio

from speckit_reflex.capsule.core import Capsule
from speckit_reflex.capsule.servicer import CapsuleServicer
from speckit_reflex.capsule.store import CapsuleStore, make_engine
from speckit_reflex.runtime.bootstrap import ServiceContext
from speckit_reflex.v1 import capsule_pb2, capsule_pb2_grpc


class CapsuleService:
    name = "capsule"
    service_names = (capsule_pb2.DESCRIPTOR.services_by_name["Capsule"].full_name,)

    def __init__(self, core: Capsule):
        self.core = core

    def register(self, server: aio.Server) -> None:
        capsule_pb2_grpc.add_CapsuleServicer_to_server(CapsuleServicer(self.core), server)

    async def start(self) -> None:
        await self.core.start()

    async def close(self) -> None:
        await self.core.close()


def build(ctx: ServiceContext) -> CapsuleService:
    """Capsule over the settings' database (SQLite under .speckit/ by default).

    One rule for SQLite and PostgreSQL: an empty database gets the schema on
    first start; an older one is migrated by an operator with `speckit db
    upgrade` (see migrate.verify_schema).
    """
    url = ctx.settings.effective_database_url()
    store = CapsuleStore(make_engine(url), auto_create_schema=True)
    home = ctx.settings.home
    core = Capsule(
        store,
        ctx.policy.policy,
        report_dir=home / "eval",
        report_root=home,
        metrics=ctx.metrics,
        tracer=ctx.tracer,
    )
    return CapsuleService(core)
