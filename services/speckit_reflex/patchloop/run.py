"""One run of the patch loop, from its first build to its one result.

    build → (rustc's own fixes) → attempts until fixed, refused, in error or out of attempts → result

A run works on its scratch copy (opened and closed by the service, core.py).
Its first build tells whether there is anything to fix; rustc's
machine-applicable suggestions go first when the policy allows; then each
model-backed attempt (attempt.py) starts from the last good state. The run
keeps its session's consecutive-failure count (registry.py) and ends with
exactly one result: RunResult to the caller, LOOP_RESULT to Capsule, the
fix written back to the workspace when asked.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from opentelemetry.trace import Span, Tracer

from speckit_reflex.contract import enum_name
from speckit_reflex.patchloop.attempt import (
    MODE_SOURCE,
    Attempt,
    AttemptContext,
    PatchFormat,
    Routes,
)
from speckit_reflex.patchloop.capture import CaptureStore, RunCapture, start_capture
from speckit_reflex.patchloop.compiler import CompileOutcome, Compiler, machine_applicable_edits
from speckit_reflex.patchloop.patch import PatchRejected
from speckit_reflex.patchloop.ports import EventPort, InferencePort, RouterPort
from speckit_reflex.patchloop.progress import judge_patch
from speckit_reflex.patchloop.registry import RunRecord, SessionFailures
from speckit_reflex.patchloop.spec import RunSpec
from speckit_reflex.patchloop.steps import AttemptTiming, Builder, Disk, RunReport
from speckit_reflex.patchloop.workspace import Scratch
from speckit_reflex.policy import LoadedPolicy
from speckit_reflex.runtime.metrics import Metrics
from speckit_reflex.runtime.tracing import span
from speckit_reflex.v1 import common_pb2, patchloop_pb2

log = logging.getLogger("speckit.patchloop")


@dataclass(frozen=True)
class RunPeers:
    """What every run of a service uses: its peers, the compiler, the
    session counts and the process's instruments."""

    router: RouterPort
    inference: InferencePort
    events: EventPort
    compiler: Compiler
    sessions: SessionFailures
    #: where the runs' blocking file work goes
    disk: Disk
    policy: LoadedPolicy
    #: bound of one model call as seen from here (the adapter enforces the real ones)
    model_timeout_s: float
    tracer: Tracer | None = None
    metrics: Metrics | None = None
    #: where runs' workspaces and fixes are captured (capture.mode = full_io)
    captures: CaptureStore | None = None


@dataclass
class _Delivery:
    """A fixed run's diff, and whether it went back into the workspace."""

    diff: str = ""
    applied: bool = False
    note: str = ""


class Run:
    """One run: its state while it executes, and how it ends."""

    def __init__(self, peers: RunPeers, spec: RunSpec, scratch: Scratch, record: RunRecord):
        self._peers = peers
        self._spec = spec
        self._scratch = scratch
        self._report = RunReport(spec, record, peers.events, peers.policy.sha256)
        self._builder = Builder(
            peers.compiler, scratch, spec, self._report, tracer=peers.tracer, metrics=peers.metrics
        )
        self._routes = Routes()
        self._attempts = AttemptContext(
            spec=spec,
            scratch=scratch,
            disk=peers.disk,
            report=self._report,
            builder=self._builder,
            router=peers.router,
            inference=peers.inference,
            model_timeout_s=peers.model_timeout_s,
            patch=PatchFormat.for_max_tokens(spec.max_tokens),
            routes=self._routes,
            feedback=[],
        )
        self._started = time.perf_counter()
        self._attempt = 0
        self._span: Span | None = None
        self._capture: RunCapture | None = None

    async def execute(self) -> None:
        """The whole run; always ends with exactly one result event."""
        # The run's span; its trace holds every build, decision and model call
        # of the run (peers join it through gRPC metadata).
        with span(
            self._peers.tracer,
            "patchloop.run",
            **{"speckit.run_id": self._spec.run_id, "speckit.session_id": self._spec.session_id},
        ) as run_span:
            self._span = run_span
            try:
                await self._announce()
                await self._loop()
            except asyncio.CancelledError:
                await self._finish(
                    patchloop_pb2.OUTCOME_GAVE_UP, reason="cancelled: the caller went away"
                )
                raise
            except Exception as exc:
                log.exception("run crashed", extra={"fields": {"run_id": self._spec.run_id}})
                await self._finish(
                    patchloop_pb2.OUTCOME_GAVE_UP,
                    reason=f"internal_error: {type(exc).__name__}: {exc}",
                )

    async def _announce(self) -> None:
        """Notes on what this run's builds will not have."""
        note = await self._peers.compiler.sandbox_note()
        if note:
            self._report.note(note)
        if self._scratch.sync.refused_links:
            self._report.note(
                f"symlinks leading outside the workspace are not followed: "
                f"{', '.join(self._scratch.sync.refused_links[:20])}"
            )

    async def _loop(self) -> None:
        spec = self._spec
        state = await self._builder.compile()
        if state.clean:
            await self._finish(
                patchloop_pb2.OUTCOME_ALREADY_CLEAN, reason="the build is already clean"
            )
            return
        if state.result.timed_out:
            await self._finish(
                patchloop_pb2.OUTCOME_GAVE_UP,
                reason=f"build_timeout: no result within {spec.build_timeout_s:g} s",
            )
            return
        self._capture = await start_capture(
            self._peers.captures,
            self._peers.disk,
            self._peers.policy.policy,
            spec,
            self._scratch,
            state,
            self._report.note,
        )
        if spec.compiler_fast_path:
            improved = await self._fast_path(state)
            if improved is not None:
                state = improved
                if state.clean:
                    await self._finish(
                        patchloop_pb2.OUTCOME_FIXED,
                        fixed_by=patchloop_pb2.FIX_SOURCE_COMPILER,
                        reason="fixed by rustc's machine-applicable suggestions",
                    )
                    return
        sessions = self._peers.sessions
        failures = await sessions.at_start(spec.session_id, spec.run_id, self._report.note)
        last_reason = ""
        while self._attempt < spec.max_attempts:
            self._attempt += 1
            self._report.attempt = self._attempt
            with span(
                self._peers.tracer, "patchloop.attempt", **{"speckit.attempt": self._attempt}
            ):
                result = await Attempt(self._attempts, self._attempt, state, failures).run()
                if result.ends_run is not None:  # its result belongs to the attempt's span
                    await self._finish(result.ends_run, reason=result.reason)
                    return
            if result.fixed:
                fixed_by = MODE_SOURCE.get(
                    self._routes.last_mode, patchloop_pb2.FIX_SOURCE_UNSPECIFIED
                )
                sessions.set(spec.session_id, 0)
                await self._finish(
                    patchloop_pb2.OUTCOME_FIXED,
                    fixed_by=fixed_by,
                    reason=f"fixed on attempt {self._attempt}",
                )
                return
            state, last_reason = result.state, result.reason
            failures += 1
            sessions.set(spec.session_id, failures)
        await self._finish(
            patchloop_pb2.OUTCOME_GAVE_UP,
            reason=f"max_attempts: still failing after {self._attempt} attempt(s) "
            f"({state.error_count} error(s) left); last: {last_reason}",
        )

    async def _fast_path(self, state: CompileOutcome) -> CompileOutcome | None:
        """Apply rustc's MachineApplicable suggestions; the new state if they helped."""
        scratch = self._scratch
        errors = state.diagnostics.errors
        await self._peers.disk.read_ahead(
            scratch, (s.file for d in errors for s in d.suggestions())
        )
        planned = machine_applicable_edits(errors, scratch)
        if not planned:
            return None
        timing = AttemptTiming()
        previous = scratch.write(planned)
        self._report.event(
            patch_applied=patchloop_pb2.PatchApplied(
                source=patchloop_pb2.FIX_SOURCE_COMPILER, edits=len(planned), files=sorted(planned)
            )
        )
        after = await self._builder.compile(timing)
        helped = after.clean or judge_patch(state, after).kept
        if not helped:
            scratch.restore(previous)
        self._report.capsule(
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

    # -- the end ---------------------------------------------------------------

    async def _finish(
        self,
        outcome: patchloop_pb2.Outcome.ValueType,
        reason: str,
        fixed_by: patchloop_pb2.FixSource.ValueType = patchloop_pb2.FIX_SOURCE_UNSPECIFIED,
    ) -> None:
        """The run's result: a fix's diff (and write-back when asked, on a
        thread) and its capture, then RunResult and the LOOP_RESULT event.
        Once only."""
        if self._report.done:
            return
        delivery = _Delivery()
        if outcome == patchloop_pb2.OUTCOME_FIXED:
            try:
                await self._peers.disk.run(self._deliver, delivery)
            except asyncio.CancelledError:
                # The write-back finished (on_thread waits for it): say so.
                self._conclude(outcome, reason, fixed_by, delivery)
                raise
            if self._capture is not None:
                # Stored before the caller hears the result; the diff is the one delivered.
                await self._capture.fixed(self._scratch, fixed_by, delivery.diff)
        self._conclude(outcome, reason, fixed_by, delivery)

    def _deliver(self, delivery: _Delivery) -> None:
        """The fix's diff, written back into the workspace when the run asks (blocking I/O)."""
        delivery.diff = self._scratch.diff()
        if not self._spec.apply:
            return
        try:
            written = self._scratch.write_back()
            delivery.applied = True
            delivery.note = (
                f"wrote {len(written)} file(s) back to the workspace: {', '.join(written)}"
            )
        except (PatchRejected, OSError) as exc:
            delivery.note = f"fix not written back: {exc}"

    def _conclude(
        self,
        outcome: patchloop_pb2.Outcome.ValueType,
        reason: str,
        fixed_by: patchloop_pb2.FixSource.ValueType,
        delivery: _Delivery,
    ) -> None:
        report, fixed = self._report, outcome == patchloop_pb2.OUTCOME_FIXED
        if report.done:
            return
        if delivery.note:
            report.note(delivery.note)
        # Free the cache slot before the caller hears the result, so its next
        # run on this workspace finds the slot (and its warm build) free.
        self._scratch.release()
        outcome_name = enum_name(patchloop_pb2.Outcome, outcome)
        duration_ms = (time.perf_counter() - self._started) * 1000
        result = patchloop_pb2.RunResult(
            outcome=outcome,
            fixed_by=fixed_by,
            reason=reason,
            attempts=self._attempt,
            diff=delivery.diff,
            applied=delivery.applied,
            duration_ms=duration_ms,
            escalated=self._routes.escalated,
        )
        report.capsule(
            common_pb2.EVENT_TYPE_LOOP_RESULT,
            mode=self._routes.last_mode,
            success=fixed,
            attempt=self._attempt,
            latency_ms=duration_ms,
            reason=reason,
            payload={
                "outcome": outcome_name,
                "fixed_by": enum_name(patchloop_pb2.FixSource, fixed_by),
                "attempts": self._attempt,
                "escalated": self._routes.escalated,
                "duration_ms": round(duration_ms, 3),
                "applied": delivery.applied,
                "workspace": str(self._scratch.workspace),
            },
        )
        report.event(result=result)
        if self._span is not None:
            self._span.set_attributes(
                {"speckit.outcome": outcome_name, "speckit.attempts": self._attempt}
            )
        # With tracing on, the log formatter adds the run's trace_id to this line.
        log.info(
            "run finished",
            extra={
                "fields": {
                    "run_id": self._spec.run_id,
                    "outcome": outcome_name,
                    "attempts": self._attempt,
                    "duration_ms": round(duration_ms, 1),
                }
            },
        )
        if self._peers.metrics is not None:
            self._peers.metrics.patchloop_runs(outcome_name).inc()
