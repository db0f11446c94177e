"""Typed async client of the PatchLoop service."""

from __future__ import annotations

from collections.abc import AsyncIterable
from typing import Any

from grpc import aio

from speckit_reflex.v1 import common_pb2, patchloop_pb2, patchloop_pb2_grpc


class PatchLoopClient:
    """Thin wrapper over the generated stub: start runs, follow them, look them up."""

    def __init__(self, channel: aio.Channel):
        self._stub = patchloop_pb2_grpc.PatchLoopStub(channel)

    def run(
        self,
        workspace: str,
        *,
        apply: bool = False,
        max_attempts: int = 0,
        build_profile: str = "",
        verify_profile: str | None = None,
        compiler_fast_path: bool | None = None,
        build_timeout_s: int = 0,
        force_mode: common_pb2.RoutingMode.ValueType = common_pb2.ROUTING_MODE_UNSPECIFIED,
        session_id: str = "",
        run_id: str = "",
        bakeoff_run_id: str = "",
        task_id: str = "",
        local_only: bool = False,
        timeout_s: float | None = None,
    ) -> AsyncIterable[patchloop_pb2.RunEvent]:
        """Start a run; iterate the result for its progress events (the last is the result)."""
        req = patchloop_pb2.RunRequest(
            workspace=workspace,
            apply=apply,
            max_attempts=max_attempts,
            build_profile=build_profile,
            build_timeout_s=build_timeout_s,
            force_mode=force_mode,
            session_id=session_id,
            run_id=run_id,
            bakeoff_run_id=bakeoff_run_id,
            task_id=task_id,
            local_only=local_only,
        )
        if compiler_fast_path is not None:
            req.compiler_fast_path = compiler_fast_path
        if verify_profile is not None:  # "" = no verify step; None = the policy's
            req.verify_profile = verify_profile
        return self._stub.Run(req, timeout=timeout_s)

    async def run_to_end(
        self, workspace: str, **kwargs: Any
    ) -> tuple[list[patchloop_pb2.RunEvent], patchloop_pb2.RunResult]:
        """Run with run()'s keyword arguments and collect every event; returns (events, result)."""
        events = [ev async for ev in self.run(workspace, **kwargs)]
        results = [ev.result for ev in events if ev.WhichOneof("kind") == "result"]
        if not results:
            raise RuntimeError("the run stream ended without a result")
        return events, results[-1]

    async def build_settings(self, timeout_s: float = 10.0) -> patchloop_pb2.BuildSettings:
        """The server's sandbox layers, build profiles, time limits and workspace roots."""
        return await self._stub.GetBuildSettings(
            patchloop_pb2.GetBuildSettingsRequest(), timeout=timeout_s
        )

    async def get_run(self, run_id: str, timeout_s: float = 10.0) -> patchloop_pb2.RunStatus:
        """A running or finished run (grpc NOT_FOUND when unknown)."""
        return await self._stub.GetRun(
            patchloop_pb2.GetRunRequest(run_id=run_id), timeout=timeout_s
        )

    async def get_build_cache(self, timeout_s: float = 30.0) -> patchloop_pb2.BuildCacheInfo:
        """Where PatchLoop's persistent build cache is, and how full."""
        return await self._stub.GetBuildCache(
            patchloop_pb2.GetBuildCacheRequest(), timeout=timeout_s
        )

    async def clear_build_cache(
        self, timeout_s: float = 120.0
    ) -> patchloop_pb2.ClearBuildCacheReply:
        """Remove every cache entry no run is using."""
        return await self._stub.ClearBuildCache(
            patchloop_pb2.ClearBuildCacheRequest(), timeout=timeout_s
        )

    async def check_patch(
        self,
        run_id: str,
        *,
        recorded_fix: bool = False,
        patch_json: str | None = None,
        timeout_s: float = 600.0,
    ) -> patchloop_pb2.CheckPatchReply:
        """Build a captured run's workspace with its recorded fix, a candidate
        patch, or as captured (neither), in PatchLoop's sandbox."""
        req = patchloop_pb2.CheckPatchRequest(run_id=run_id)
        if recorded_fix:
            req.recorded_fix = True
        elif patch_json is not None:
            req.patch_json = patch_json
        return await self._stub.CheckPatch(req, timeout=timeout_s)
