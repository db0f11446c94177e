"""The PatchLoop service core: compile -> diagnostics -> route -> model patch -> apply -> recompile.

`PatchLoop` admits a run request (spec.py), opens the run's scratch copy of
the workspace (on a thread: the copy is file I/O of any size), registers it
(registry.py) and runs it as a task (run.py), streaming its events to the
caller; a caller that goes away cancels the run. One run is a first build,
rustc's own fixes, then model-backed attempts (attempt.py): each asks the
Router, calls the Inference Adapter with the patch schema, validates and
applies the patch and rebuilds; a patch that leaves a new error or makes no
progress is reverted (progress.py), so the next prompt shares its long
prefix with the previous one. Every attempt becomes a PATCH_ATTEMPT event and
the run one LOOP_RESULT event; progress streams to the caller as RunEvents.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from opentelemetry.trace import Tracer

from speckit_reflex.patchloop.buildcache import BuildCache, CacheInfo, ClearResult, build_profile
from speckit_reflex.patchloop.capture import CaptureStore
from speckit_reflex.patchloop.compiler import Compiler
from speckit_reflex.patchloop.ports import (
    EventPort,
    InferencePort,
    RouterPort,
    SessionHistoryPort,
)
from speckit_reflex.patchloop.registry import RunRecord, RunRegistry, SessionFailures
from speckit_reflex.patchloop.roots import WorkspaceRoots
from speckit_reflex.patchloop.run import Run, RunPeers
from speckit_reflex.patchloop.spec import RunSpec
from speckit_reflex.patchloop.steps import Disk
from speckit_reflex.patchloop.workspace import Scratch
from speckit_reflex.policy import LoadedPolicy
from speckit_reflex.runtime import validate
from speckit_reflex.runtime.metrics import Metrics
from speckit_reflex.v1 import patchloop_pb2


class PatchLoop:
    """Runs patch loops and remembers recent runs."""

    def __init__(
        self,
        router: RouterPort,
        inference: InferencePort,
        events: EventPort,
        compiler: Compiler,
        policy: LoadedPolicy,
        *,
        roots: WorkspaceRoots,
        registry: RunRegistry | None = None,
        scratch_dir: Path | None = None,
        history: SessionHistoryPort | None = None,
        metrics: Metrics | None = None,
        cache: BuildCache | None = None,
        tracer: Tracer | None = None,
        captures: CaptureStore | None = None,
    ):
        self._compiler = compiler
        self._policy = policy
        self._roots = roots
        self._registry = registry or RunRegistry()
        self._scratch_dir = scratch_dir
        self._cache = cache
        # Copies are made on threads of their own, and removed (or sized and
        # evicted) on one more: with a single shared pool, 64 concurrent runs'
        # copies queued behind earlier runs' clean-up, and their first event
        # came seconds late. A run's small file work (reading, patching,
        # reverting) has threads of its own too, so it never waits for a copy.
        self._copy_threads = ThreadPoolExecutor(
            max_workers=32, thread_name_prefix="speckit-scratch"
        )
        self._housekeeping = ThreadPoolExecutor(max_workers=1, thread_name_prefix="speckit-cache")
        self._file_threads = ThreadPoolExecutor(max_workers=8, thread_name_prefix="speckit-files")
        routing = policy.policy.routing
        self._peers = RunPeers(
            router=router,
            inference=inference,
            events=events,
            compiler=compiler,
            sessions=SessionFailures(history),
            disk=Disk(self._file_threads),
            policy=policy,
            # The adapter enforces per-backend timeouts; this only bounds a hung peer.
            model_timeout_s=max(routing.reflex.timeout_ms, routing.cloud.timeout_ms) / 1000 * 3
            + 30,
            tracer=tracer,
            metrics=metrics,
            captures=captures,
        )
        self._tasks: set[asyncio.Task[None]] = set()

    async def build_settings(self) -> patchloop_pb2.BuildSettings:
        """The sandbox layers this host gives builds, the policy's profiles and limits."""
        pl = self._policy.policy.patchloop
        return patchloop_pb2.BuildSettings(
            sandbox=await self._compiler.sandbox_layers(),
            profiles=[
                patchloop_pb2.BuildProfile(name=n, command=c)
                for n, c in sorted(pl.profiles.items())
            ],
            build_profile=pl.build_profile,
            verify_profile=pl.verify_profile,
            build_timeout_s=pl.build_timeout_s,
            max_build_timeout_s=pl.max_build_timeout_s,
            workspace_roots=[str(r) for r in self._roots.roots],
        )

    def get_run(self, run_id: str) -> patchloop_pb2.RunStatus:
        """A running or finished run (NotFound when unknown)."""
        return self._registry.get(validate.text(run_id, "run_id", 128, required=True)).status()

    async def run(self, request: patchloop_pb2.RunRequest) -> AsyncIterator[patchloop_pb2.RunEvent]:
        """Start a run and stream its events; a caller that goes away cancels it."""
        spec = RunSpec.from_request(request, self._policy)
        scratch = await self._open_scratch(spec)
        record = RunRecord(spec.run_id, str(scratch.workspace))
        try:
            self._registry.add(record)
        except BaseException:
            await self.close_scratch(scratch)
            raise
        run = Run(self._peers, spec, scratch, record)
        task = asyncio.create_task(self._execute(run, scratch), name=f"run-{spec.run_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            async for event in record.follow():
                yield event
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def _execute(self, run: Run, scratch: Scratch) -> None:
        try:
            await run.execute()
        finally:
            # Removing a temporary copy or sizing a cache slot is disk work:
            # in a thread, and finished even if this task is cancelled again.
            await asyncio.shield(self.close_scratch(scratch))

    async def _open_scratch(self, spec: RunSpec) -> Scratch:
        """The run's scratch copy, made in a thread: the copy is file I/O of any
        size, and on the event loop one large workspace would stall every
        other stream of this process."""
        loop = asyncio.get_running_loop()
        workspace = await loop.run_in_executor(self._copy_threads, self._admit, spec.workspace)
        toolchain = await self._compiler.toolchain() if self._cache is not None else ""
        opening = loop.run_in_executor(
            self._copy_threads,
            functools.partial(
                Scratch.open,
                workspace,
                self._scratch_dir,
                self._cache,
                toolchain,
                build_profile(spec.build.command),
            ),
        )
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            # The caller left mid-copy: the copy still finishes, then its
            # cache slot is freed (it would stay locked otherwise).
            def discard(done: asyncio.Future[Scratch]) -> None:
                if not done.cancelled() and done.exception() is None:
                    loop.run_in_executor(self._housekeeping, done.result().close)

            opening.add_done_callback(discard)
            raise

    def _admit(self, workspace: str) -> Path:
        """`workspace` as a canonical path under a root, with a Cargo.toml (stats: blocking)."""
        return Scratch.check_workspace(str(self._roots.admit(workspace)))

    async def close_scratch(self, scratch: Scratch) -> None:
        await asyncio.get_running_loop().run_in_executor(self._housekeeping, scratch.close)

    async def build_cache_info(self) -> CacheInfo:
        """Where the persistent build cache is and how full (no cache: disabled, empty)."""
        if self._cache is None:
            return CacheInfo(
                dir="", enabled=False, size_bytes=0, max_bytes=0, workspaces=0, slots=0
            )
        return await asyncio.to_thread(self._cache.info)

    async def clear_build_cache(self) -> ClearResult:
        """Remove every cache slot no run holds."""
        if self._cache is None:
            return ClearResult(dir="", removed=0, freed_bytes=0, busy=0)
        return await asyncio.to_thread(self._cache.clear)

    async def close(self) -> None:
        """Cancel runs still in progress (service shutdown)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
