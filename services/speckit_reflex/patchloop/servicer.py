"""PatchLoop gRPC servicer: transport only, every call goes straight to the core."""

from __future__ import annotations

from collections.abc import AsyncIterator

from grpc import aio

from speckit_reflex.patchloop.check import PatchChecker
from speckit_reflex.patchloop.core import PatchLoop
from speckit_reflex.v1 import patchloop_pb2, patchloop_pb2_grpc


class PatchLoopServicer(patchloop_pb2_grpc.PatchLoopServicer):
    def __init__(self, patchloop: PatchLoop, checker: PatchChecker):
        self._patchloop = patchloop
        self._checker = checker

    async def Run(
        self,
        request: patchloop_pb2.RunRequest,
        context: aio.ServicerContext[patchloop_pb2.RunRequest, patchloop_pb2.RunEvent],
    ) -> AsyncIterator[patchloop_pb2.RunEvent]:
        async for event in self._patchloop.run(request):
            yield event

    async def GetRun(
        self,
        request: patchloop_pb2.GetRunRequest,
        context: aio.ServicerContext[patchloop_pb2.GetRunRequest, patchloop_pb2.RunStatus],
    ) -> patchloop_pb2.RunStatus:
        return self._patchloop.get_run(request.run_id)

    async def GetBuildCache(
        self,
        request: patchloop_pb2.GetBuildCacheRequest,
        context: aio.ServicerContext[
            patchloop_pb2.GetBuildCacheRequest, patchloop_pb2.BuildCacheInfo
        ],
    ) -> patchloop_pb2.BuildCacheInfo:
        info = await self._patchloop.build_cache_info()
        return patchloop_pb2.BuildCacheInfo(
            dir=info.dir,
            enabled=info.enabled,
            size_bytes=info.size_bytes,
            max_bytes=info.max_bytes,
            workspaces=info.workspaces,
            slots=info.slots,
        )

    async def ClearBuildCache(
        self,
        request: patchloop_pb2.ClearBuildCacheRequest,
        context: aio.ServicerContext[
            patchloop_pb2.ClearBuildCacheRequest, patchloop_pb2.ClearBuildCacheReply
        ],
    ) -> patchloop_pb2.ClearBuildCacheReply:
        done = await self._patchloop.clear_build_cache()
        return patchloop_pb2.ClearBuildCacheReply(
            dir=done.dir, removed=done.removed, freed_bytes=done.freed_bytes, busy=done.busy
        )

    async def GetBuildSettings(
        self,
        request: patchloop_pb2.GetBuildSettingsRequest,
        context: aio.ServicerContext[
            patchloop_pb2.GetBuildSettingsRequest, patchloop_pb2.BuildSettings
        ],
    ) -> patchloop_pb2.BuildSettings:
        return await self._patchloop.build_settings()

    async def CheckPatch(
        self,
        request: patchloop_pb2.CheckPatchRequest,
        context: aio.ServicerContext[
            patchloop_pb2.CheckPatchRequest, patchloop_pb2.CheckPatchReply
        ],
    ) -> patchloop_pb2.CheckPatchReply:
        return await self._checker.check(request)
