"""Wiring of the PatchLoop service: sandbox, compiler, peers and the loop core."""

from __future__ import annotations

import asyncio

from grpc import aio

from speckit_reflex.patchloop.buildcache import BuildCache
from speckit_reflex.patchloop.capture import GrpcCaptureStore
from speckit_reflex.patchloop.check import PatchChecker
from speckit_reflex.patchloop.compiler import Compiler
from speckit_reflex.patchloop.core import PatchLoop
from speckit_reflex.patchloop.ports import CapsuleSessionHistory, GrpcInference, GrpcRouter
from speckit_reflex.patchloop.roots import WorkspaceRoots
from speckit_reflex.patchloop.sandbox import BuildRunner, Sandbox
from speckit_reflex.patchloop.servicer import PatchLoopServicer
from speckit_reflex.runtime.bootstrap import ServiceContext
from speckit_reflex.runtime.events import EventSink
from speckit_reflex.runtime.metrics import watch_event_sink
from speckit_reflex.v1 import patchloop_pb2, patchloop_pb2_grpc


class PatchLoopService:
    name = "patchloop"
    service_names = (patchloop_pb2.DESCRIPTOR.services_by_name["PatchLoop"].full_name,)

    def __init__(
        self, patchloop: PatchLoop, sink: EventSink, sandbox: Sandbox, checker: PatchChecker
    ):
        self.patchloop = patchloop
        self.checker = checker
        self.sink = sink
        self.sandbox = sandbox

    def register(self, server: aio.Server) -> None:
        patchloop_pb2_grpc.add_PatchLoopServicer_to_server(
            PatchLoopServicer(self.patchloop, self.checker), server
        )

    async def start(self) -> None:
        self.sink.start()
        # Which sandbox layers this host gives, found once (subprocesses:
        # off the event loop) and logged, before the first build.
        await asyncio.to_thread(self.sandbox.probe)

    async def close(self) -> None:
        await self.patchloop.close()
        await self.sink.close()


def build(ctx: ServiceContext) -> PatchLoopService:
    """The PatchLoop service for `ctx`: peers through ctx's shared channels."""
    sink = ctx.event_sink("patchloop", capacity=ctx.policy.policy.inference.event_buffer)
    sandbox = Sandbox()
    compiler = Compiler(BuildRunner(sandbox))
    captures = GrpcCaptureStore(ctx.channel("capsule"))
    patchloop = PatchLoop(
        router=GrpcRouter(ctx.channel("router")),
        inference=GrpcInference(ctx.channel("inference")),
        events=sink,
        compiler=compiler,
        policy=ctx.policy,
        roots=WorkspaceRoots.from_setting(ctx.settings.workspace_roots),
        scratch_dir=None,
        history=CapsuleSessionHistory(ctx.channel("capsule")),
        metrics=ctx.metrics,
        cache=BuildCache(
            ctx.settings.home / "cache" / "targets", ctx.settings.build_cache_max_mb * 1024 * 1024
        ),
        tracer=ctx.tracer,
        captures=captures,
    )
    if ctx.metrics is not None:
        watch_event_sink(ctx.metrics, "patchloop", sink)
    return PatchLoopService(patchloop, sink, sandbox, PatchChecker(compiler, ctx.policy, captures))
