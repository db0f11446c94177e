"""The suite runner: every selected task, in each requested mode, through
PatchLoop on a fresh copy of its broken crate; trials and the run recorded in
Capsule as they finish; figures and the report at the end.

Client-side: it reaches the services only through `speckit_reflex.clients`.
Ctrl-C (task cancellation) stops the remaining trials, keeps the finished
ones, marks the run "interrupted" and still writes the report.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import grpc

from speckit_reflex.bakeoff.digest import suite_digest
from speckit_reflex.bakeoff.lint import lint_fix
from speckit_reflex.bakeoff.metrics import BackendFigures, figures_by_backend
from speckit_reflex.bakeoff.suite import Suite, SuiteTask, copy_crate, copy_tree
from speckit_reflex.bakeoff.trial import MODE_VALUES, TrialResult
from speckit_reflex.v1 import capsule_pb2, common_pb2, patchloop_pb2

# GR-006: the fixed crate must build and its tests pass: the policy's test
# profile (by default `cargo test --offline -q`).
VERIFY_PROFILE = "test"
# Longest wait for in-flight attempt events before the report is written.
EVENT_SETTLE_S = 5.0


class PatchLoopRuns(Protocol):
    """What the runner needs of the PatchLoop client (`PatchLoopClient`)."""

    def run(
        self,
        workspace: str,
        *,
        apply: bool = ...,
        max_attempts: int = ...,
        verify_profile: str | None = ...,
        compiler_fast_path: bool | None = ...,
        build_timeout_s: int = ...,
        force_mode: common_pb2.RoutingMode.ValueType = ...,
        session_id: str = ...,
        bakeoff_run_id: str = ...,
        task_id: str = ...,
    ) -> AsyncIterable[patchloop_pb2.RunEvent]: ...


class CapsuleRecords(Protocol):
    """What the runner needs of the Capsule client."""

    async def upsert_bakeoff_run(self, run: capsule_pb2.BakeoffRun) -> capsule_pb2.BakeoffRun: ...

    async def record_trials(
        self, trials: Sequence[capsule_pb2.Trial]
    ) -> capsule_pb2.RecordTrialsReply: ...

    async def bakeoff_stats(
        self, win: capsule_pb2.Window | None = None, bakeoff_run_id: str = ""
    ) -> capsule_pb2.BakeoffStats: ...

    async def write_report(
        self, win: capsule_pb2.Window | None = None, out_dir: str = "", bakeoff_run_id: str = ""
    ) -> capsule_pb2.WriteReportReply: ...


@dataclass(frozen=True)
class RunOptions:
    """How to run the suite."""

    modes: tuple[str, ...] = ("reflex",)
    concurrency: int = 1
    # Attempts per trial; 0 = the PatchLoop policy's default.
    max_attempts: int = 0
    build_timeout_s: int = 0
    # Report folder on the Capsule server's disk; "" = its .speckit/eval.
    report_dir: str = ""
    session_prefix: str = "bakeoff"
    # Where crate copies are made; None = the system temp folder.
    scratch_root: Path | None = None
    # Modes not run, with why (e.g. {"cloud": "DEEPSEEK_API_KEY is not set"}):
    # each task gets a skipped trial, recorded as such, never as a result.
    skipped_modes: Mapping[str, str] = field(default_factory=dict)
    # What each reflex server reports about a model's weights ((backend,
    # model) -> ModelIdentity.key), recorded with every reflex trial.
    model_identities: Mapping[tuple[str, str], str] = field(default_factory=dict)
    # Lint each fix with cargo clippy (clippy::correctness) against the reference fix.
    lint: bool = True


@dataclass
class BakeoffResult:
    """What a run came to; `status` is "done" or "interrupted"."""

    bakeoff_run_id: str
    suite: str
    suite_version: int
    modes: tuple[str, ...]
    status: str
    planned: int
    trials: list[TrialResult] = field(default_factory=list)
    figures: list[BackendFigures] = field(default_factory=list)
    # sha256 of the suite's tasks (bakeoff.digest): verdicts never mix two corpora.
    suite_digest: str = ""
    # The suite's folder (shipped, or a private one such as a harvest).
    suite_dir: str = ""
    report: capsule_pb2.WriteReportReply | None = None
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    finished_at: datetime | None = None
    concurrency: int = 1
    # Wall time of the whole run, and the sum of each trial's own wall time.
    wall_s: float = 0.0
    trial_wall_s: float = 0.0

    @property
    def speedup(self) -> float | None:
        """Sum of the trials' wall times over the run's: what running them one
        after another at these durations would take, relative to this run."""
        return (
            round(self.trial_wall_s / self.wall_s, 2) if self.wall_s > 0 and self.trials else None
        )

    def summary_json(self) -> dict[str, Any]:
        """Counts, timing and per-backend figures (stored with the run in Capsule)."""
        return {
            "planned": self.planned,
            "finished": len(self.trials),
            "fixed": sum(t.success for t in self.trials),
            "concurrency": self.concurrency,
            "wall_s": round(self.wall_s, 3),
            "trial_wall_s": round(self.trial_wall_s, 3),
            "speedup": self.speedup,
            "backends": [f.to_json() for f in self.figures],
        }


# Called after each trial with (trial, finished, planned, fixed so far by mode).
TrialListener = Callable[[TrialResult, int, int, dict[str, int]], None]


class BakeoffRunner:
    """Runs a suite through PatchLoop and records it in Capsule."""

    def __init__(self, patchloop: PatchLoopRuns, capsule: CapsuleRecords, options: RunOptions):
        self._loop = patchloop
        self._capsule = capsule
        self._opt = options

    async def run(
        self, suite: Suite, tasks: Sequence[SuiteTask], on_trial: TrialListener | None = None
    ) -> BakeoffResult:
        """Run `tasks` once per mode; returns even when interrupted."""
        jobs = [(t, m) for t in tasks for m in self._opt.modes]
        skipped = [
            (t, m) for t in tasks for m in self._opt.skipped_modes if m not in self._opt.modes
        ]
        result = BakeoffResult(
            bakeoff_run_id=str(uuid.uuid4()),
            suite=suite.name,
            suite_version=suite.version,
            modes=self._opt.modes,
            status="running",
            planned=len(jobs),
            concurrency=max(1, self._opt.concurrency),
            suite_digest=await asyncio.to_thread(suite_digest, suite),
            suite_dir=str(suite.root),
        )
        await self._capsule.upsert_bakeoff_run(self._run_record(result))
        fixed: dict[str, int] = {m: 0 for m in self._opt.modes}
        gate = asyncio.Semaphore(max(1, self._opt.concurrency))
        if skipped:
            await self._capsule.record_trials(
                [self._skipped(t, m).to_proto(result.bakeoff_run_id) for t, m in skipped]
            )

        async def one(task: SuiteTask, mode: str) -> None:
            async with gate:
                t0 = time.perf_counter()
                trial = await self._trial(result.bakeoff_run_id, task, mode)
                result.trial_wall_s += time.perf_counter() - t0
            await self._capsule.record_trials([trial.to_proto(result.bakeoff_run_id)])
            result.trials.append(trial)
            fixed[mode] += trial.success
            if on_trial:
                on_trial(trial, len(result.trials), result.planned, dict(fixed))

        started = time.perf_counter()
        workers = [asyncio.create_task(one(t, m)) for t, m in jobs]
        try:
            await asyncio.gather(*workers)
            result.status = "done"
        except asyncio.CancelledError:
            result.status = "interrupted"
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            # Let the bookkeeping below run although the caller was cancelled.
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
        result.wall_s = time.perf_counter() - started
        await self._finish(result)
        return result

    async def _finish(self, result: BakeoffResult) -> None:
        result.finished_at = datetime.now(UTC)
        result.figures = figures_by_backend(result.trials)
        await self._capsule.upsert_bakeoff_run(self._run_record(result))
        await self._await_attempt_events(result)
        result.report = await self._capsule.write_report(
            out_dir=self._opt.report_dir, bakeoff_run_id=result.bakeoff_run_id
        )

    async def _await_attempt_events(self, result: BakeoffResult) -> None:
        """PatchLoop delivers its PatchAttempt events in the background; give
        the last ones a moment to land so the report counts every attempt."""
        expected = sum(t.attempts for t in result.trials if not t.error)
        deadline = time.monotonic() + EVENT_SETTLE_S
        while time.monotonic() < deadline:
            stats = await self._capsule.bakeoff_stats(bakeoff_run_id=result.bakeoff_run_id)
            if stats.reflex.total_attempts + stats.cloud.total_attempts >= expected:
                return
            await asyncio.sleep(0.1)

    def _skipped(self, task: SuiteTask, mode: str) -> TrialResult:
        return TrialResult(
            trial_id=str(uuid.uuid4()),
            task_id=task.id,
            category=task.category,
            difficulty=task.difficulty,
            mode=mode,
            outcome="skipped",
            skipped=self._opt.skipped_modes[mode],
        )

    def _run_record(self, result: BakeoffResult) -> capsule_pb2.BakeoffRun:
        mode = self._opt.modes[0] if len(self._opt.modes) == 1 else "both"
        run = capsule_pb2.BakeoffRun(
            id=result.bakeoff_run_id,
            suite=result.suite,
            mode=mode,
            status=result.status,
            task_count=result.planned,
            suite_version=result.suite_version,
            suite_digest=result.suite_digest,
        )
        run.started_at.FromDatetime(result.started_at)
        if result.finished_at is not None:
            run.finished_at.FromDatetime(result.finished_at)
            run.summary.update(result.summary_json())
        return run

    async def _trial(self, bakeoff_run_id: str, task: SuiteTask, mode: str) -> TrialResult:
        trial = TrialResult(
            trial_id=str(uuid.uuid4()),
            task_id=task.id,
            category=task.category,
            difficulty=task.difficulty,
            mode=mode,
        )
        # Each trial on its own copy (its own cache entry in PatchLoop), made
        # and removed in a thread so concurrent trials' streams never wait on it.
        tmp = Path(
            await asyncio.to_thread(
                tempfile.mkdtemp, prefix=f"bakeoff-{task.id}-", dir=self._opt.scratch_root
            )
        )
        try:
            workspace = await asyncio.to_thread(copy_crate, task, tmp / "crate")
            try:
                run = self._loop.run(
                    str(workspace),
                    # The fix is written back to this private copy so it can be linted.
                    apply=self._opt.lint,
                    max_attempts=self._opt.max_attempts,
                    verify_profile=VERIFY_PROFILE,
                    # The model is what is measured, not rustc's own suggestions.
                    compiler_fast_path=False,
                    build_timeout_s=self._opt.build_timeout_s,
                    force_mode=MODE_VALUES[mode],
                    session_id=f"{self._opt.session_prefix}-{bakeoff_run_id[:8]}-{task.id}-{mode}",
                    bakeoff_run_id=bakeoff_run_id,
                    task_id=task.id,
                )
                async for event in run:
                    trial.absorb(event)
            except grpc.aio.AioRpcError as exc:
                # One task's failure is a failed trial, not a failed bakeoff.
                trial.error = f"patchloop {exc.code().name}: {exc.details()}"
                trial.outcome = "error"
            if self._opt.lint and trial.outcome == "fixed":
                reference = await asyncio.to_thread(copy_crate, task, tmp / "reference")
                await asyncio.to_thread(copy_tree, task.fix_dir, reference)
                trial.lint = await lint_fix(workspace, reference, tmp / "lint-target")
        finally:
            await asyncio.shield(asyncio.to_thread(shutil.rmtree, tmp, True))
        trial.finished_at = datetime.now(UTC)
        if mode == "reflex":
            trial.model_identity = self._opt.model_identities.get((trial.backend, trial.model), "")
        return trial
