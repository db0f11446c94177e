"""The patch loop: compile -> diagnostics -> route -> model patch -> apply -> recompile.

One run works on a scratch copy of a workspace. Each model-backed attempt asks
the Router (with the session's consecutive-failure count, so escalation to
cloud follows the policy), calls the Inference Adapter with the patch schema,
validates and applies the patch, and rebuilds. A patch that leaves a new
error or makes no progress is reverted (patchloop/progress.py), so the next
prompt shares its long prefix with the previous one. Every attempt becomes a PATCH_ATTEMPT event and the run one
LOOP_RESULT event; progress streams to the caller as RunEvents.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry.trace import Span, Tracer

from speckit_reflex.errors import InvalidArgument, NotFound
from speckit_reflex.patchloop.buildcache import BuildCache, CacheInfo, ClearResult, build_profile
from speckit_reflex.patchloop.capture import CaptureStore, RunCapture, start_capture
from speckit_reflex.patchloop.compiler import CompileOutcome, Compiler, machine_applicable_edits
from speckit_reflex.patchloop.patch import (
    PatchBounds,
    PatchRejected,
    parse_patch,
    patch_schema,
    plan_patch,
)
from speckit_reflex.patchloop.ports import (
    EventPort,
    InferencePort,
    ModelCallFailed,
    RouteRefused,
    RouterPort,
    SessionHistoryPort,
    SessionHistoryUnavailable,
)
from speckit_reflex.patchloop.progress import judge_patch
from speckit_reflex.patchloop.prompt import (
    FailedAttempt,
    build_messages,
    file_excerpts,
    render_diagnostics,
)
from speckit_reflex.patchloop.roots import WorkspaceRoots
from speckit_reflex.patchloop.workspace import Scratch
from speckit_reflex.policy import LoadedPolicy
from speckit_reflex.policy.model import PROFILE_NAME
from speckit_reflex.runtime import validate
from speckit_reflex.runtime.events import new_event
from speckit_reflex.runtime.metrics import Metrics
from speckit_reflex.runtime.tracing import span
from speckit_reflex.v1 import common_pb2, inference_pb2, patchloop_pb2, router_pb2

log = logging.getLogger("speckit.patchloop")

_MODE_SOURCE = {
    common_pb2.ROUTING_MODE_REFLEX: patchloop_pb2.FIX_SOURCE_REFLEX,
    common_pb2.ROUTING_MODE_CLOUD: patchloop_pb2.FIX_SOURCE_CLOUD,
}
RETRY_TEMPERATURE = 0.3
# The Inference Adapter's refusal of a cloud call without its API key (inference/core.py).
CLOUD_KEY_MISSING = "cloud_key_missing"


@dataclass(frozen=True)
class BuildStep:
    """A policy build profile: its name and the command it stands for."""

    profile: str
    command: tuple[str, ...]


_PROFILE_NAME = re.compile(PROFILE_NAME)
# Limits of RunRequest fields beyond what holds for every field of their kind
# (runtime.validate: no NUL, known enum values, bounded text).
_RUN_RULES: dict[str, validate.Rule] = {
    "workspace": validate.Text(4096, required=True),
    "max_attempts": validate.Range(0, 50),
    "session_id": validate.Text(128),
    "run_id": validate.Text(128),
    "bakeoff_run_id": validate.Text(128),
    "task_id": validate.Text(128),
    "build_profile": validate.Text(32),
    "verify_profile": validate.Text(32),
}
_FORCE_MODES = (
    common_pb2.ROUTING_MODE_UNSPECIFIED,
    common_pb2.ROUTING_MODE_REFLEX,
    common_pb2.ROUTING_MODE_CLOUD,
)


def _profile(field: str, name: str, profiles: dict[str, tuple[str, ...]]) -> BuildStep:
    """The policy's profile called `name`; a request can name one, never supply a command."""
    if not _PROFILE_NAME.match(name):
        raise InvalidArgument(
            f"{field}: {name!r} is not a profile name (a name such as 'check', never a command)"
        )
    if name not in profiles:
        raise InvalidArgument(
            f"{field}: no profile {name!r} in the policy (profiles: {', '.join(sorted(profiles))})"
        )
    return BuildStep(name, tuple(profiles[name]))


@dataclass(frozen=True)
class RunSpec:
    """A checked run request with policy defaults filled in."""

    workspace: str
    apply: bool
    max_attempts: int
    build: BuildStep
    verify: BuildStep | None
    compiler_fast_path: bool
    build_timeout_s: float
    force_mode: int
    session_id: str
    run_id: str
    bakeoff_run_id: str
    task_id: str
    local_only: bool
    max_tokens: int
    allow_create_files: bool

    @classmethod
    def from_request(cls, req: patchloop_pb2.RunRequest, policy: LoadedPolicy) -> RunSpec:
        """Check every field (InvalidArgument naming it) and fill unset ones from `policy.patchloop`."""
        pl = policy.policy.patchloop
        validate.check_message(req, _RUN_RULES)
        if req.build_timeout_s > pl.max_build_timeout_s:
            raise InvalidArgument(
                f"build_timeout_s: {req.build_timeout_s} is above the policy's "
                f"patchloop.max_build_timeout_s ({pl.max_build_timeout_s})"
            )
        if req.force_mode not in _FORCE_MODES:
            raise InvalidArgument(
                f"force_mode: {common_pb2.RoutingMode.Name(req.force_mode)} is not a mode "
                "of the Implementer (UNSPECIFIED, REFLEX or CLOUD)"
            )
        build = _profile("build_profile", req.build_profile or pl.build_profile, pl.profiles)
        verify_name = req.verify_profile if req.HasField("verify_profile") else pl.verify_profile
        verify = _profile("verify_profile", verify_name, pl.profiles) if verify_name else None
        run_id = req.run_id or str(uuid.uuid4())
        return cls(
            workspace=req.workspace,
            apply=req.apply,
            max_attempts=req.max_attempts or pl.max_attempts,
            build=build,
            verify=verify,
            compiler_fast_path=req.compiler_fast_path
            if req.HasField("compiler_fast_path")
            else pl.compiler_fast_path,
            build_timeout_s=float(req.build_timeout_s or pl.build_timeout_s),
            force_mode=req.force_mode,
            session_id=req.session_id or run_id,
            run_id=run_id,
            bakeoff_run_id=req.bakeoff_run_id,
            task_id=req.task_id,
            local_only=req.local_only,
            max_tokens=pl.max_tokens,
            allow_create_files=pl.allow_create_files,
        )


class RunRecord:
    """A running or finished run: its events so far and, at the end, its result."""

    def __init__(self, run_id: str, workspace: str):
        self.run_id = run_id
        self.workspace = workspace
        self.events: list[patchloop_pb2.RunEvent] = []
        self.result: patchloop_pb2.RunResult | None = None
        self._wake = asyncio.Event()

    @property
    def done(self) -> bool:
        return self.result is not None

    def append(self, event: patchloop_pb2.RunEvent) -> None:
        self.events.append(event)
        if event.WhichOneof("kind") == "result":
            self.result = event.result
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()

    async def follow(self) -> AsyncIterator[patchloop_pb2.RunEvent]:
        """Every event from the first, then new ones as they come, until the result."""
        i = 0
        while True:
            wake = self._wake
            while i < len(self.events):
                yield self.events[i]
                i += 1
            if self.done:
                return
            await wake.wait()

    def status(self) -> patchloop_pb2.RunStatus:
        st = patchloop_pb2.RunStatus(
            run_id=self.run_id,
            state=patchloop_pb2.RUN_STATE_DONE if self.done else patchloop_pb2.RUN_STATE_RUNNING,
            events=self.events,
            workspace=self.workspace,
        )
        if self.result is not None:
            st.result.CopyFrom(self.result)
        return st


class RunRegistry:
    """The most recent runs, bounded; the oldest finished ones are forgotten first."""

    def __init__(self, capacity: int = 256):
        self._capacity = capacity
        self._runs: OrderedDict[str, RunRecord] = OrderedDict()

    def add(self, record: RunRecord) -> None:
        if record.run_id in self._runs:
            raise InvalidArgument(f"run id {record.run_id!r} is already in use")
        self._runs[record.run_id] = record
        while len(self._runs) > self._capacity:
            victim = next((k for k, r in self._runs.items() if r.done), None)
            if victim is None:
                break
            del self._runs[victim]

    def get(self, run_id: str) -> RunRecord:
        if run_id not in self._runs:
            raise NotFound(
                f"no run {run_id!r} (unknown, or forgotten after {self._capacity} newer runs)"
            )
        return self._runs[run_id]


class SessionFailures:
    """Consecutive failed loops per session, so escalation spans a session's runs."""

    def __init__(self, capacity: int = 10_000):
        self._capacity = capacity
        self._counts: OrderedDict[str, int] = OrderedDict()

    def known(self, session_id: str) -> int | None:
        """The count, or None for a session this process has not seen."""
        return self._counts.get(session_id)

    def set(self, session_id: str, count: int) -> None:
        self._counts[session_id] = count
        self._counts.move_to_end(session_id)
        while len(self._counts) > self._capacity:
            self._counts.popitem(last=False)


@dataclass
class AttemptTiming:
    """Where one attempt's time went; `overhead_ms` is the loop's own cost."""

    started: float = field(default_factory=time.perf_counter)
    compile_ms: float = 0.0
    model_ms: float = 0.0

    def summary(self) -> dict[str, float]:
        wall = (time.perf_counter() - self.started) * 1000
        return {
            "attempt_ms": round(wall, 3),
            "compile_ms": round(self.compile_ms, 3),
            "model_ms": round(self.model_ms, 3),
            "overhead_ms": round(wall - self.compile_ms - self.model_ms, 3),
        }


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
        sessions: SessionFailures | None = None,
        scratch_dir: Path | None = None,
        history: SessionHistoryPort | None = None,
        metrics: Metrics | None = None,
        cache: BuildCache | None = None,
        tracer: Tracer | None = None,
        captures: CaptureStore | None = None,
    ):
        self._captures = captures
        self._metrics = metrics
        self._tracer = tracer
        self._router = router
        self._inference = inference
        self._events = events
        self._compiler = compiler
        self._policy = policy
        self._roots = roots
        self._registry = registry or RunRegistry()
        self._sessions = sessions or SessionFailures()
        self._history = history
        self._scratch_dir = scratch_dir
        self._cache = cache
        # Copies are made on threads of their own, and removed (or sized and
        # evicted) on one more: with a single shared pool, 64 concurrent runs'
        # copies queued behind earlier runs' clean-up, and their first event
        # came seconds late.
        self._copy_threads = ThreadPoolExecutor(
            max_workers=32, thread_name_prefix="speckit-scratch"
        )
        self._housekeeping = ThreadPoolExecutor(max_workers=1, thread_name_prefix="speckit-cache")
        self._tasks: set[asyncio.Task[None]] = set()

    async def session_failures(self, spec: RunSpec, note: Callable[[str], None]) -> int:
        """Consecutive failed attempts of the run's session: this process's
        count, or Capsule's record for a session it has not seen yet."""
        count = self._sessions.known(spec.session_id)
        if count is not None or self._history is None or spec.session_id == spec.run_id:
            return count or 0  # a session named after its run is new by construction
        try:
            count = await self._history.consecutive_failures(spec.session_id)
        except SessionHistoryUnavailable as exc:
            note(f"session history unavailable ({exc}); counting this session's failures from 0")
            return 0
        if count:
            note(f"session {spec.session_id}: {count} consecutive failed attempt(s) on record")
        self._sessions.set(spec.session_id, count)
        return count

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
        task = asyncio.create_task(
            _Run(self, spec, scratch, record).execute(), name=f"run-{spec.run_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            async for event in record.follow():
                yield event
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def _open_scratch(self, spec: RunSpec) -> Scratch:
        """The run's scratch copy, made in a thread: the copy is file I/O of any
        size, and on the event loop one large workspace would stall every
        other stream of this process."""
        workspace = Scratch.check_workspace(str(self._roots.admit(spec.workspace)))
        toolchain = await self._compiler.toolchain() if self._cache is not None else ""
        opening = asyncio.get_running_loop().run_in_executor(
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
                    asyncio.get_running_loop().run_in_executor(
                        self._housekeeping, done.result().close
                    )

            opening.add_done_callback(discard)
            raise

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


@dataclass
class _Attempt:
    """What one model-backed attempt did, for its PATCH_ATTEMPT event."""

    decision: router_pb2.RoutingDecision
    timing: AttemptTiming
    before: CompileOutcome
    reply: inference_pb2.CompleteReply | None = None
    after: CompileOutcome | None = None


class _Run:
    """The state of one run while it executes."""

    def __init__(self, loop: PatchLoop, spec: RunSpec, scratch: Scratch, record: RunRecord):
        self.loop = loop
        self.spec = spec
        self.scratch = scratch
        self.record = record
        self.started = time.perf_counter()
        self.bounds = PatchBounds.for_max_tokens(spec.max_tokens)
        self.schema = patch_schema(self.bounds)
        self.schema_text = json.dumps(self.schema, separators=(",", ":"))
        self.attempt = 0
        self.seq = 0
        self.escalated = False
        self.feedback: list[FailedAttempt] = []
        self.last_mode = common_pb2.ROUTING_MODE_UNSPECIFIED
        self.run_span: Span | None = None
        self.capture: RunCapture | None = None

    # -- event helpers -------------------------------------------------

    def _event(self, **kind: Any) -> None:
        self.seq += 1
        ev = patchloop_pb2.RunEvent(
            run_id=self.spec.run_id, seq=self.seq, attempt=self.attempt, **kind
        )
        ev.time.GetCurrentTime()
        self.record.append(ev)

    def note(self, text: str) -> None:
        self._event(note=text)

    def _capsule(self, event_type: int, **fields: Any) -> None:
        self.loop._events.emit(
            new_event(
                event_type,
                role=common_pb2.ROLE_IMPLEMENTER,
                stage=common_pb2.STAGE_IMPLEMENT,
                session_id=self.spec.session_id,
                run_id=self.spec.run_id,
                bakeoff_run_id=self.spec.bakeoff_run_id or None,
                task_id=self.spec.task_id or None,
                policy_hash=self.loop._policy.sha256,
                **fields,
            )
        )

    # -- steps -----------------------------------------------------------

    async def compile(self, timing: AttemptTiming | None = None) -> CompileOutcome:
        """Build (and verify when configured), streaming start and finish events."""
        outcome = await self._build(self.spec.build, verify=False, timing=timing)
        if outcome.clean and self.spec.verify is not None:
            outcome = await self._build(self.spec.verify, verify=True, timing=timing)
        return outcome

    async def _build(
        self, step: BuildStep, verify: bool, timing: AttemptTiming | None
    ) -> CompileOutcome:
        self._event(
            compile_started=patchloop_pb2.CompileStarted(
                command=step.command,
                verify=verify,
                profile=step.profile,
                cache=self.scratch.cache_state,
            )
        )  # type: ignore[arg-type]
        with span(
            self.loop._tracer,
            "patchloop.build",
            **{
                "speckit.step": "verify" if verify else "compile",
                "speckit.profile": step.profile,
                "speckit.command": " ".join(step.command),
            },
        ) as current:
            outcome = await self.loop._compiler.compile(
                step.command, self.scratch, self.spec.build_timeout_s
            )
            if current is not None:
                current.set_attributes(
                    {
                        "speckit.errors": outcome.error_count,
                        "speckit.clean": outcome.clean,
                        "speckit.timed_out": outcome.result.timed_out,
                    }
                )
        if timing is not None:
            timing.compile_ms += outcome.result.duration_ms
        if self.loop._metrics is not None:
            self.loop._metrics.build_seconds("verify" if verify else "compile").observe(
                outcome.result.duration_ms / 1000
            )
        self._event(compile_finished=outcome.to_proto(verify))
        if outcome.result.timed_out:
            self.note(
                f"build killed after {self.spec.build_timeout_s:g} s wall-clock limit (with its process group)"
            )
        return outcome

    async def fast_path(self, state: CompileOutcome) -> CompileOutcome | None:
        """Apply rustc's MachineApplicable suggestions; the new state if they helped."""
        planned = machine_applicable_edits(state.diagnostics.errors, self.scratch)
        if not planned:
            return None
        timing = AttemptTiming()
        previous = self.scratch.write(planned)
        self._event(
            patch_applied=patchloop_pb2.PatchApplied(
                source=patchloop_pb2.FIX_SOURCE_COMPILER, edits=len(planned), files=sorted(planned)
            )
        )
        after = await self.compile(timing)
        helped = after.clean or judge_patch(state, after).kept
        if not helped:
            self.scratch.restore(previous)
        self._capsule(
            common_pb2.EVENT_TYPE_PATCH_ATTEMPT,
            mode=common_pb2.ROUTING_MODE_UNSPECIFIED,
            success=after.clean,
            attempt=0,
            reason="" if after.clean else "still_failing",
            payload={
                "source": "compiler",
                "files": sorted(planned),
                "errors_before": state.error_count,
                "errors_after": after.error_count,
                "kept": helped,
                "timing": timing.summary(),
            },
        )
        return after if helped else None

    async def execute(self) -> None:
        """The whole run; always ends with exactly one result event."""
        # The run's span; its trace holds every build, decision and model call
        # of the run (peers join it through gRPC metadata).
        with span(
            self.loop._tracer,
            "patchloop.run",
            **{"speckit.run_id": self.spec.run_id, "speckit.session_id": self.spec.session_id},
        ) as run_span:
            self.run_span = run_span
            await self._execute()

    async def _execute(self) -> None:
        try:
            note = await self.loop._compiler.sandbox_note()
            if note:
                self.note(note)
            if self.scratch.sync.refused_links:
                self.note(
                    f"symlinks leading outside the workspace are not followed: "
                    f"{', '.join(self.scratch.sync.refused_links[:20])}"
                )
            await self._loop()
        except asyncio.CancelledError:
            self.finish(patchloop_pb2.OUTCOME_GAVE_UP, reason="cancelled: the caller went away")
            raise
        except Exception as exc:
            log.exception("run crashed", extra={"fields": {"run_id": self.spec.run_id}})
            self.finish(
                patchloop_pb2.OUTCOME_GAVE_UP, reason=f"internal_error: {type(exc).__name__}: {exc}"
            )
        finally:
            # Removing a temporary copy or sizing a cache slot is disk work:
            # in a thread, and finished even if this task is cancelled again.
            await asyncio.shield(self.loop.close_scratch(self.scratch))

    async def _loop(self) -> None:
        state = await self.compile()
        if state.clean:
            self.finish(patchloop_pb2.OUTCOME_ALREADY_CLEAN, reason="the build is already clean")
            return
        if state.result.timed_out:
            self.finish(
                patchloop_pb2.OUTCOME_GAVE_UP,
                reason=f"build_timeout: no result within {self.spec.build_timeout_s:g} s",
            )
            return
        self.capture = await start_capture(
            self.loop._captures, self.loop._policy.policy, self.spec, self.scratch, state, self.note
        )
        if self.spec.compiler_fast_path:
            improved = await self.fast_path(state)
            if improved is not None:
                state = improved
                if state.clean:
                    if self.capture is not None:
                        await self.capture.fixed(self.scratch, patchloop_pb2.FIX_SOURCE_COMPILER)
                    self.finish(
                        patchloop_pb2.OUTCOME_FIXED,
                        fixed_by=patchloop_pb2.FIX_SOURCE_COMPILER,
                        reason="fixed by rustc's machine-applicable suggestions",
                    )
                    return
        failures = await self.loop.session_failures(self.spec, self.note)
        last_reason = ""
        while self.attempt < self.spec.max_attempts:
            self.attempt += 1
            with span(self.loop._tracer, "patchloop.attempt", **{"speckit.attempt": self.attempt}):
                ok, state, last_reason = await self._attempt(state, failures)
            if ok:
                if self.capture is not None:
                    await self.capture.fixed(self.scratch, _MODE_SOURCE.get(self.last_mode, 0))
                self.loop._sessions.set(self.spec.session_id, 0)
                self.finish(
                    patchloop_pb2.OUTCOME_FIXED,
                    fixed_by=_MODE_SOURCE.get(self.last_mode, 0),
                    reason=f"fixed on attempt {self.attempt}",
                )
                return
            if self.record.done:  # refused
                return
            failures += 1
            self.loop._sessions.set(self.spec.session_id, failures)
        self.finish(
            patchloop_pb2.OUTCOME_GAVE_UP,
            reason=f"max_attempts: still failing after {self.attempt} attempt(s) "
            f"({state.error_count} error(s) left); last: {last_reason}",
        )

    async def _attempt(
        self, state: CompileOutcome, failures: int
    ) -> tuple[bool, CompileOutcome, str]:
        """One model-backed attempt: (fixed?, state to continue from, failure reason)."""
        timing = AttemptTiming()
        try:
            decision = await self.loop._router.decide(
                router_pb2.DecideRequest(
                    stage=common_pb2.STAGE_IMPLEMENT,
                    role=common_pb2.ROLE_IMPLEMENTER,
                    session_id=self.spec.session_id,
                    run_id=self.spec.run_id,
                    attempt=self.attempt,
                    consecutive_failures=failures,
                    local_only=self.spec.local_only,
                    force_mode=self.spec.force_mode,  # type: ignore[arg-type]
                )
            )
        except RouteRefused as refused:
            self.note(f"route refused: {refused.reason}")
            self.finish(patchloop_pb2.OUTCOME_REFUSED, reason=refused.reason)
            return False, state, refused.reason
        self._event(routing=decision)
        if (
            decision.mode == common_pb2.ROUTING_MODE_CLOUD
            and self.last_mode == common_pb2.ROUTING_MODE_REFLEX
        ):
            self.escalated = True
            self.note(
                f"escalated to cloud after {failures} consecutive failure(s): {decision.detail or decision.reason}"
            )
        self.last_mode = decision.mode

        messages = build_messages(
            self.bounds,
            file_excerpts(state.diagnostics.errors, self._read_quietly, self.scratch.resolve),
            render_diagnostics(state.diagnostics.errors, f"{self.scratch.root}/"),
            self.feedback,
        )
        request = inference_pb2.CompleteRequest(
            # Reflex: name the model only, so the adapter can fail over to the
            # next local backend serving it if the Router's pick just died
            # (its health view may be one probe interval old). Cloud: as decided.
            backend="" if decision.mode == common_pb2.ROUTING_MODE_REFLEX else decision.backend,
            model=decision.model,
            messages=[inference_pb2.ChatMessage(**m) for m in messages],
            max_tokens=self.spec.max_tokens,
            temperature=0.0 if self.attempt == 1 else RETRY_TEMPERATURE,
            json_schema=self.schema_text,
            schema_name="rust_patch",
            mode=decision.mode,
            role=common_pb2.ROLE_IMPLEMENTER,
            session_id=self.spec.session_id,
            run_id=self.spec.run_id,
            decision_id=decision.decision_id,
            attempt=self.attempt,
            fallback_reason=_reason_name(decision.reason) if decision.is_fallback else "",
        )
        if self.attempt > 1:
            # A retry must be able to differ from the attempt before it.
            request.seed = self.attempt
        call_started = time.perf_counter()
        try:
            reply = await self.loop._inference.complete(request, self._model_timeout_s())
        except ModelCallFailed as exc:
            if exc.detail.startswith(CLOUD_KEY_MISSING):
                # Refused before leaving the machine: not an attempt, a refusal that names the variable.
                self.note(f"cloud call refused: {exc.detail}")
                self.finish(patchloop_pb2.OUTCOME_REFUSED, reason=exc.detail)
                return False, state, exc.detail
            timing.model_ms = (time.perf_counter() - call_started) * 1000
            self._event(
                model_call=patchloop_pb2.ModelCall(
                    backend=decision.backend,
                    model=decision.model,
                    mode=decision.mode,
                    error=str(exc),
                )
            )
            return (
                False,
                state,
                self._failed(_Attempt(decision, timing, state), "model_error", str(exc)),
            )
        timing.model_ms = (time.perf_counter() - call_started) * 1000
        self._event(model_call=_model_call(reply, decision))

        try:
            if not reply.schema_valid:
                raise PatchRejected(
                    "invalid_json",
                    reply.validation_error or "the reply does not match the patch schema",
                )
            edits = parse_patch(reply.content, self.schema)
            planned = plan_patch(
                edits, self.scratch.resolve, self.scratch.read_text, self.spec.allow_create_files
            )
        except PatchRejected as rej:
            self._event(
                patch_rejected=patchloop_pb2.PatchRejected(reason=rej.reason, detail=rej.detail)
            )
            return (
                False,
                state,
                self._failed(_Attempt(decision, timing, state, reply), rej.reason, rej.detail),
            )

        previous = self.scratch.write(planned)
        self._event(
            patch_applied=patchloop_pb2.PatchApplied(
                source=_MODE_SOURCE.get(decision.mode, 0), edits=len(edits), files=sorted(planned)
            )
        )
        after = await self.compile(timing)
        if after.clean:
            self._record_attempt(
                _Attempt(decision, timing, state, reply, after),
                success=True,
                reason="",
                edits=len(edits),
                files=sorted(planned),
            )
            return True, after, ""
        progress = judge_patch(state, after)
        if not progress.kept:
            # Back to the last good state (never keep a new error such as
            # broken syntax): the next prompt then repeats this one's prefix
            # and hits the server's cache.
            self.scratch.restore(previous)
        reason = "build_timeout" if after.result.timed_out else "still_failing"
        self._failed(
            _Attempt(decision, timing, state, reply, after),
            reason,
            progress.detail,
            edits=len(edits),
            files=sorted(planned),
            kept=progress.kept,
            new_errors=list(progress.new_errors),
        )
        return False, (after if progress.kept else state), f"{reason}: {progress.detail}"

    def _read_quietly(self, rel: str) -> str | None:
        try:
            return self.scratch.read_text(rel)
        except PatchRejected:
            return None

    def _model_timeout_s(self) -> float:
        routing = self.loop._policy.policy.routing
        # The adapter enforces per-backend timeouts; this only bounds a hung peer.
        return max(routing.reflex.timeout_ms, routing.cloud.timeout_ms) / 1000 * 3 + 30

    def _failed(self, attempt: _Attempt, reason: str, detail: str, **payload: Any) -> str:
        self.feedback.append(FailedAttempt(self.attempt, reason, detail[:300]))
        self._record_attempt(attempt, success=False, reason=reason, detail=detail[:500], **payload)
        return f"{reason}: {detail}"

    def _record_attempt(
        self, attempt: _Attempt, success: bool, reason: str, **payload: Any
    ) -> None:
        decision, reply, before, after, timing = (
            attempt.decision,
            attempt.reply,
            attempt.before,
            attempt.after,
            attempt.timing,
        )
        fields: dict[str, Any] = {}
        details: dict[str, Any] = {
            "errors_before": before.error_count,
            "errors_after": after.error_count if after else before.error_count,
            "decision_id": decision.decision_id,
            "routing_reason": _reason_name(decision.reason),
            "timing": timing.summary(),
            **payload,
        }
        if reply is not None:
            usage, t = reply.usage, reply.timing
            fields.update(
                json_valid=reply.schema_valid,
                latency_ms=t.latency_ms,
                ttft_ms=t.ttft_ms if t.HasField("ttft_ms") else None,
                tokens_per_s=t.tokens_per_s,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                cached_tokens=usage.cached_tokens if usage.HasField("cached_tokens") else None,
            )
            details["cache_reuse"] = _cache_reuse(reply)
            details["call_id"] = reply.call_id
        else:
            # No reply (timeout, cooling down, connection error): an error,
            # not a schema failure, so json_valid stays unset.
            fields.update(latency_ms=timing.model_ms)
        self._capsule(
            common_pb2.EVENT_TYPE_PATCH_ATTEMPT,
            mode=decision.mode,
            model=(reply.model if reply is not None and reply.model else decision.model),
            backend=(reply.backend if reply is not None and reply.backend else decision.backend),
            is_fallback=decision.is_fallback,
            success=success,
            attempt=self.attempt,
            reason=reason,
            payload=details,
            **fields,
        )

    def finish(self, outcome: int, reason: str, fixed_by: int = 0) -> None:
        """Record the result (diff, write-back when asked) and the LOOP_RESULT event."""
        if self.record.done:
            return
        fixed = outcome == patchloop_pb2.OUTCOME_FIXED
        outcome_name = patchloop_pb2.Outcome.Name(outcome).removeprefix("OUTCOME_").lower()
        diff = self.scratch.diff() if fixed else ""
        applied = False
        if fixed and self.spec.apply:
            try:
                written = self.scratch.write_back()
                applied = True
                self.note(
                    f"wrote {len(written)} file(s) back to the workspace: {', '.join(written)}"
                )
            except (PatchRejected, OSError) as exc:
                self.note(f"fix not written back: {exc}")
        # Free the cache slot before the caller hears the result, so its next
        # run on this workspace finds the slot (and its warm build) free.
        self.scratch.release()
        duration_ms = (time.perf_counter() - self.started) * 1000
        result = patchloop_pb2.RunResult(
            outcome=outcome,  # type: ignore[arg-type]
            fixed_by=fixed_by,  # type: ignore[arg-type]
            reason=reason,
            attempts=self.attempt,
            diff=diff,
            applied=applied,
            duration_ms=duration_ms,
            escalated=self.escalated,
        )
        self._capsule(
            common_pb2.EVENT_TYPE_LOOP_RESULT,
            mode=self.last_mode,
            success=fixed,
            attempt=self.attempt,
            latency_ms=duration_ms,
            reason=reason,
            payload={
                "outcome": outcome_name,
                "fixed_by": patchloop_pb2.FixSource.Name(fixed_by)
                .removeprefix("FIX_SOURCE_")
                .lower(),
                "attempts": self.attempt,
                "escalated": self.escalated,
                "duration_ms": round(duration_ms, 3),
                "applied": applied,
                "workspace": str(self.scratch.workspace),
            },
        )
        self._event(result=result)
        if self.run_span is not None:
            self.run_span.set_attributes(
                {"speckit.outcome": outcome_name, "speckit.attempts": self.attempt}
            )
        # With tracing on, the log formatter adds the run's trace_id to this line.
        log.info(
            "run finished",
            extra={
                "fields": {
                    "run_id": self.spec.run_id,
                    "outcome": outcome_name,
                    "attempts": self.attempt,
                    "duration_ms": round(duration_ms, 1),
                }
            },
        )
        if self.loop._metrics is not None:
            self.loop._metrics.patchloop_runs(outcome_name).inc()


def _reason_name(reason: int) -> str:
    return common_pb2.RoutingReason.Name(reason).removeprefix("ROUTING_REASON_").lower()  # type: ignore[arg-type]


def _cache_reuse(reply: inference_pb2.CompleteReply) -> float | None:
    usage = reply.usage
    if not usage.HasField("cached_tokens") or usage.prompt_tokens == 0:
        return None
    return round(usage.cached_tokens / usage.prompt_tokens, 4)


def _model_call(
    reply: inference_pb2.CompleteReply, decision: router_pb2.RoutingDecision
) -> patchloop_pb2.ModelCall:
    call = patchloop_pb2.ModelCall(
        backend=reply.backend or decision.backend,
        model=reply.model or decision.model,
        mode=decision.mode,
        schema_valid=reply.schema_valid,
        attempts=reply.attempts,
        error=reply.validation_error,
    )
    call.usage.CopyFrom(reply.usage)
    call.timing.CopyFrom(reply.timing)
    reuse = _cache_reuse(reply)
    if reuse is not None:
        call.cache_reuse = reuse
    return call
