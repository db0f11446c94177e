"""What one run and its attempts share: the run's report, its build step,
where an attempt's time went, and disk work on threads.

- `RunReport`: the run's two outputs, RunEvents streamed to the caller (into
  its RunRecord, numbered) and Capsule events carrying the run's identity.
- `Builder`: builds the scratch copy (and verifies it when the policy says
  so), streaming CompileStarted/CompileFinished, with a span and metrics.
- `Disk`: blocking file work off the event loop, each call run to its end.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from opentelemetry.trace import Tracer

from speckit_reflex.patchloop.compiler import CompileOutcome, Compiler
from speckit_reflex.patchloop.ports import EventPort
from speckit_reflex.patchloop.registry import RunRecord
from speckit_reflex.patchloop.spec import BuildStep, RunSpec
from speckit_reflex.patchloop.workspace import Scratch
from speckit_reflex.runtime.events import new_event
from speckit_reflex.runtime.metrics import Metrics
from speckit_reflex.runtime.tracing import span
from speckit_reflex.v1 import common_pb2, patchloop_pb2

T = TypeVar("T")


class Disk:
    """Blocking file work of runs, off the event loop on threads of its own
    (the default executor is shared with other work of the process: Capsule's
    database writes, in `serve all`).

    What goes there: the first read of each file of the scratch copy (its
    size is unknown until read), a captured run's workspace snapshot, and
    the fix's diff and write-back into the user's tree.
    What does not: reading what the run has in memory already, and writing a
    patch or a revert into the private copy (bounded and small: a thread hop
    each cost more than the writes, about 0.6 ms per attempt at p50 in
    bench/patchloop_bench.py on a loaded host).
    """

    def __init__(self, executor: Executor):
        self._executor = executor

    async def read_ahead(self, scratch: Scratch, names: Iterable[str]) -> None:
        """The files `names` in memory (a thread only for those not read yet)."""
        unread = scratch.unread(names)
        if unread:
            await self.run(scratch.load, unread)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on a worker thread, awaited to its end.

        A cancel meanwhile is raised only once `fn` has returned: the scratch
        copy is never being written by a thread while its run winds up (and
        frees the copy for the next run, or removes it).
        """
        context = contextvars.copy_context()
        work = asyncio.get_running_loop().run_in_executor(
            self._executor, functools.partial(context.run, fn, *args)
        )
        cancelled = False
        while not work.done():
            try:
                await asyncio.wait((work,))
            except asyncio.CancelledError:
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError
        return work.result()


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


class RunReport:
    """A run's outputs: numbered RunEvents for its caller, events for Capsule."""

    def __init__(self, spec: RunSpec, record: RunRecord, events: EventPort, policy_hash: str):
        self._spec = spec
        self._record = record
        self._events = events
        self._policy_hash = policy_hash
        self._seq = 0
        #: the attempt the next events belong to (0: before the first)
        self.attempt = 0

    @property
    def done(self) -> bool:
        """The result event has gone out."""
        return self._record.done

    def event(self, **kind: Any) -> None:
        """A RunEvent of one kind (routing=..., note=..., result=...) to the caller."""
        self._seq += 1
        ev = patchloop_pb2.RunEvent(
            run_id=self._spec.run_id, seq=self._seq, attempt=self.attempt, **kind
        )
        ev.time.GetCurrentTime()
        self._record.append(ev)

    def note(self, text: str) -> None:
        self.event(note=text)

    def capsule(self, event_type: common_pb2.EventType.ValueType, **fields: Any) -> None:
        """An Implementer event for Capsule (queued; never blocks)."""
        spec = self._spec
        self._events.emit(
            new_event(
                event_type,
                role=common_pb2.ROLE_IMPLEMENTER,
                stage=common_pb2.STAGE_IMPLEMENT,
                session_id=spec.session_id,
                run_id=spec.run_id,
                bakeoff_run_id=spec.bakeoff_run_id or None,
                task_id=spec.task_id or None,
                policy_hash=self._policy_hash,
                **fields,
            )
        )


class Builder:
    """Builds one run's scratch copy with its build (and verify) profile."""

    def __init__(
        self,
        compiler: Compiler,
        scratch: Scratch,
        spec: RunSpec,
        report: RunReport,
        *,
        tracer: Tracer | None = None,
        metrics: Metrics | None = None,
    ):
        self._compiler = compiler
        self._scratch = scratch
        self._spec = spec
        self._report = report
        self._tracer = tracer
        self._metrics = metrics

    async def compile(self, timing: AttemptTiming | None = None) -> CompileOutcome:
        """Build (and verify when configured), streaming start and finish events."""
        outcome = await self._build(self._spec.build, verify=False, timing=timing)
        if outcome.clean and self._spec.verify is not None:
            outcome = await self._build(self._spec.verify, verify=True, timing=timing)
        return outcome

    async def _build(
        self, step: BuildStep, verify: bool, timing: AttemptTiming | None
    ) -> CompileOutcome:
        self._report.event(
            compile_started=patchloop_pb2.CompileStarted(
                command=step.command,
                verify=verify,
                profile=step.profile,
                cache=self._scratch.cache_state,
            )
        )
        with span(
            self._tracer,
            "patchloop.build",
            **{
                "speckit.step": "verify" if verify else "compile",
                "speckit.profile": step.profile,
                "speckit.command": " ".join(step.command),
            },
        ) as current:
            outcome = await self._compiler.compile(
                step.command, self._scratch, self._spec.build_timeout_s
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
        if self._metrics is not None:
            self._metrics.build_seconds("verify" if verify else "compile").observe(
                outcome.result.duration_ms / 1000
            )
        self._report.event(compile_finished=outcome.to_proto(verify))
        if outcome.result.timed_out:
            self._report.note(
                f"build killed after {self._spec.build_timeout_s:g} s wall-clock limit (with its process group)"
            )
        return outcome
