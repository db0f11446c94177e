"""Capsule's core: the audit record of every routing decision and model call,
the bakeoff's statistics, its threshold verdict and its report.

Takes v1 request protos, returns v1 reply protos; the database work runs in a
worker thread so the gRPC event loop keeps serving while SQL runs.
"""

from __future__ import annotations

import asyncio
import errno
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from opentelemetry.trace import Tracer

from speckit_reflex.capsule.captures import (
    capture_proto,
    capture_row,
    check_fits,
    page_by_size,
    refuse_unless_full_io,
)
from speckit_reflex.capsule.events import (
    VALID_MODES,
    MalformedJson,
    event_to_row,
    row_to_event,
    struct_to_dict,
)
from speckit_reflex.capsule.report import ReportInputs, write_report
from speckit_reflex.capsule.stats import AttemptStats, GroupStats
from speckit_reflex.capsule.store import CapsuleStore, EventFilter, capture_page_token
from speckit_reflex.capsule.thresholds import Evidence, RunFact, TrialFact, judge
from speckit_reflex.capsule.windows import TimeWindow, resolve_window
from speckit_reflex.errors import (
    DomainError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from speckit_reflex.policy import Policy
from speckit_reflex.runtime.metrics import Metrics
from speckit_reflex.runtime.redact import redact, redact_text
from speckit_reflex.runtime.tracing import remote_parent
from speckit_reflex.v1 import capsule_pb2, common_pb2

MAX_BATCH = 10_000
# Store spans made per AppendEvents batch at most (one per traced span in it).
MAX_TRACE_PARENTS = 64
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
MAX_CAPTURE_PAGE = 200
MAX_CAPTURE_PAGE_WITH_FILES = 2
DEFAULT_CAPTURE_PAGE = 20
_RUN_MODES = frozenset({"", "reflex", "cloud", "both"})
_RUN_STATUSES = frozenset({"", "running", "done", "interrupted"})
T = TypeVar("T")


def _now_us() -> int:
    return time.time_ns() // 1000


def _mode_stats(g: GroupStats | None) -> capsule_pb2.ModeStats:
    if g is None:
        return capsule_pb2.ModeStats()
    out = capsule_pb2.ModeStats(
        total_attempts=g.total,
        successes=g.successes,
        replies=g.replies,
        errors=g.errors,
        cache_reported_attempts=g.cache_reported,
        percentile_method=g.percentile_method if g.total else "",
    )
    # No figure without data: a figure with nothing to compute it from stays unset.
    for name in (
        "success_rate",
        "json_compliance_rate",
        "availability_percent",
        "p50_latency_ms",
        "p95_latency_ms",
        "p50_ttft_ms",
        "p95_ttft_ms",
        "mean_tokens_per_s",
        "cache_hit_rate",
    ):
        value = getattr(g, name)
        if value is not None:
            setattr(out, name, value)
    return out


def bakeoff_stats_proto(stats: AttemptStats, window: TimeWindow) -> capsule_pb2.BakeoffStats:
    """The BakeoffStats reply of one window's statistics."""
    out = capsule_pb2.BakeoffStats(
        period=window.period,
        reflex=_mode_stats(stats.by_mode.get(common_pb2.ROUTING_MODE_REFLEX)),
        cloud=_mode_stats(stats.by_mode.get(common_pb2.ROUTING_MODE_CLOUD)),
        models=[
            capsule_pb2.ModelStats(
                mode=common_pb2.RoutingMode.ValueType(mode), model=model, stats=_mode_stats(g)
            )
            for (mode, model), g in sorted(stats.by_model.items())
        ],
    )
    out.start.FromMicroseconds(window.start_us)
    out.end.FromMicroseconds(window.end_us)
    return out


def _trial_row(t: capsule_pb2.Trial, index: int, now_us: int) -> dict[str, Any]:
    if not t.id:
        raise InvalidArgument(f"trials[{index}]: id is required")
    if t.mode not in VALID_MODES:
        raise InvalidArgument(f"trials[{index}] (id {t.id}): unknown mode {t.mode}")
    if not t.replies <= t.model_calls or t.schema_valid_replies > t.replies:
        raise InvalidArgument(
            f"trials[{index}] (id {t.id}): schema_valid_replies <= replies <= model_calls "
            f"does not hold ({t.schema_valid_replies}, {t.replies}, {t.model_calls})"
        )
    if len(t.call_latency_ms) > t.replies or any(not 0 <= x < 1e9 for x in t.call_latency_ms):
        raise InvalidArgument(
            f"trials[{index}] (id {t.id}): call_latency_ms needs one value >= 0 per reply"
        )
    return {
        "id": t.id,
        "bakeoff_run_id": t.bakeoff_run_id,
        "task_id": t.task_id,
        "category": t.category,
        "mode": t.mode,
        "model": t.model,
        "backend": t.backend,
        "success": t.success,
        "attempts": t.attempts,
        "json_valid": t.json_valid,
        "latency_ms": t.latency_ms,
        "ttft_ms": t.ttft_ms if t.HasField("ttft_ms") else None,
        "tokens_per_s": t.tokens_per_s,
        "prompt_tokens": t.prompt_tokens,
        "cached_tokens": t.cached_tokens if t.HasField("cached_tokens") else None,
        "reason": redact_text(t.reason),
        "time_us": t.time.seconds * 1_000_000 + t.time.nanos // 1000
        if t.HasField("time")
        else now_us,
        "run_id": t.run_id,
        "model_calls": t.model_calls,
        "replies": t.replies,
        "schema_valid_replies": t.schema_valid_replies,
        "first_attempt_success": t.first_attempt_success,
        "skipped": t.skipped,
        "call_latency_ms": list(t.call_latency_ms) or None,
        "model_identity": t.model_identity,
        "lint": t.lint,
    }


def _run_proto(row: dict[str, Any]) -> capsule_pb2.BakeoffRun:
    run = capsule_pb2.BakeoffRun(
        id=row["id"],
        suite=row["suite"],
        mode=row["mode"],
        status=row["status"],
        task_count=row["task_count"],
        suite_version=row["suite_version"],
        suite_digest=row["suite_digest"],
    )
    if row["started_us"] is not None:
        run.started_at.FromMicroseconds(row["started_us"])
    if row["finished_us"] is not None:
        run.finished_at.FromMicroseconds(row["finished_us"])
    if row["summary"]:
        run.summary.update(row["summary"])
    return run


def _report_write_error(exc: OSError, out_dir: Path) -> DomainError:
    """The status of a report that could not be written."""
    why = f"out_dir: cannot write the report under {str(out_dir)[:200]!r}: {exc.strerror or exc}"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDenied(why)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhausted(why)
    return InvalidArgument(why)


def _run_fact(row: dict[str, Any]) -> RunFact:
    return RunFact(row["id"], row["suite"], row["suite_version"], row["started_us"])


class Capsule:
    """Events, statistics, verdicts and reports over one CapsuleStore."""

    def __init__(
        self,
        store: CapsuleStore,
        policy: Policy,
        report_dir: Path,
        clock_us: Callable[[], int] = _now_us,
        metrics: Metrics | None = None,
        tracer: Tracer | None = None,
        report_root: Path | None = None,
    ):
        self._tracer = tracer
        self._store = store
        self._policy = policy
        self._report_dir = report_dir
        # Reports are written under this folder only (SPECKIT_HOME).
        self._report_root = report_root or report_dir
        self._clock_us = clock_us
        self._metrics = metrics

    async def _timed(self, query: str, work: Awaitable[T]) -> T:
        """`work`, its duration observed as speckit_capsule_query_seconds{query}."""
        if self._metrics is None:
            return await work
        started = time.perf_counter()
        try:
            return await work
        finally:
            self._metrics.capsule_query_seconds(query).observe(time.perf_counter() - started)

    async def start(self) -> None:
        """Check the schema now so a stale database is refused at start-up.

        An unreachable database does not stop the service: calls answer
        UNAVAILABLE and the check runs again on the next call.
        """
        await asyncio.to_thread(self._store.ensure_schema)

    # -- events ---------------------------------------------------------------

    def _append(self, events: Any) -> capsule_pb2.AppendEventsReply:
        mode = self._policy.capture.mode
        now = self._clock_us()
        rows = [event_to_row(ev, i, mode, now) for i, ev in enumerate(events)]
        inserted = self._store.append_events(rows)
        return capsule_pb2.AppendEventsReply(inserted=inserted, duplicates=len(rows) - inserted)

    async def append_events(
        self, req: capsule_pb2.AppendEventsRequest
    ) -> capsule_pb2.AppendEventsReply:
        """Validate, redact and capture a batch, then store the new ids.

        The whole batch is validated before anything is written: one bad
        event rejects the batch, naming its index.
        """
        if len(req.events) > MAX_BATCH:
            raise ResourceExhausted(
                f"AppendEvents batch of {len(req.events)} events exceeds the limit of {MAX_BATCH}; split it"
            )
        if self._metrics is None and self._tracer is None:
            return await asyncio.to_thread(self._append, req.events)
        started, started_ns = time.perf_counter(), time.time_ns()
        reply = await asyncio.to_thread(self._append, req.events)
        if self._metrics is not None:
            m = self._metrics
            m.capsule_ingest_seconds.observe(time.perf_counter() - started)
            m.capsule_events("inserted").inc(reply.inserted)
            m.capsule_events("duplicate").inc(reply.duplicates)
        if self._tracer is not None:
            self._trace_store(req.events, started_ns, reply)
        return reply

    def _trace_store(
        self, events: Any, started_ns: int, reply: capsule_pb2.AppendEventsReply
    ) -> None:
        """A `capsule.store_events` span in the trace of each span that recorded
        events of this batch (ids validated by _append), timed as the insert."""
        assert self._tracer is not None
        end_ns = time.time_ns()
        parents: dict[tuple[str, str], int] = {}
        for ev in events:
            if ev.trace_id:
                key = (ev.trace_id, ev.span_id)
                if key in parents or len(parents) < MAX_TRACE_PARENTS:
                    parents[key] = parents.get(key, 0) + 1
        for (trace_id, span_id), count in parents.items():
            self._tracer.start_span(
                "capsule.store_events",
                context=remote_parent(trace_id, span_id),
                start_time=started_ns,
                attributes={
                    "speckit.events": count,
                    "speckit.batch_size": len(events),
                    "speckit.inserted": reply.inserted,
                },
            ).end(end_time=end_ns)

    async def query_events(
        self, req: capsule_pb2.QueryEventsRequest
    ) -> capsule_pb2.QueryEventsReply:
        """One page of events matching the filters, oldest first."""
        if req.page_size > MAX_PAGE_SIZE:
            raise InvalidArgument(f"page_size {req.page_size} exceeds {MAX_PAGE_SIZE}")
        f = EventFilter(
            type=req.type,
            mode=req.mode,
            model=req.model,
            role=req.role,
            session_id=req.session_id,
            run_id=req.run_id,
            bakeoff_run_id=req.bakeoff_run_id,
            since_us=req.since.ToMicroseconds() if req.HasField("since") else None,
            until_us=req.until.ToMicroseconds() if req.HasField("until") else None,
        )
        rows, token = await self._timed(
            "events",
            asyncio.to_thread(
                self._store.query_events, f, req.page_size or DEFAULT_PAGE_SIZE, req.page_token
            ),
        )
        return capsule_pb2.QueryEventsReply(
            events=[row_to_event(r) for r in rows], next_page_token=token
        )

    # -- statistics and verdicts ----------------------------------------------

    def _window(self, window: capsule_pb2.Window | None) -> TimeWindow:
        return resolve_window(window, self._clock_us())

    async def _stats(self, window: TimeWindow, bakeoff_run_id: str) -> capsule_pb2.BakeoffStats:
        stats = await asyncio.to_thread(self._store.attempt_stats, window, bakeoff_run_id)
        return bakeoff_stats_proto(stats, window)

    async def bakeoff_stats(
        self, req: capsule_pb2.GetBakeoffStatsRequest
    ) -> capsule_pb2.BakeoffStats:
        """Per mode and per model statistics of PatchAttempt events."""
        window = self._window(req.window if req.HasField("window") else None)
        return await self._timed("stats", self._stats(window, req.bakeoff_run_id))

    def _thresholds(
        self, req: capsule_pb2.CheckThresholdsRequest
    ) -> tuple[capsule_pb2.Thresholds, int]:
        if req.HasField("thresholds"):
            t = req.thresholds
            for name in (
                "p95_latency_ms",
                "success_parity_percent",
                "json_schema_compliance_percent",
                "absolute_success_percent",
            ):
                if getattr(t, name) < 0:
                    raise InvalidArgument(f"thresholds.{name} must be >= 0")
        else:
            p = self._policy.routing.reflex.thresholds
            t = capsule_pb2.Thresholds(
                p95_latency_ms=p.p95_latency_ms,
                success_parity_percent=p.success_parity_percent,
                json_schema_compliance_percent=p.json_schema_compliance_percent,
            )
            if p.absolute_success_percent is not None:
                t.absolute_success_percent = p.absolute_success_percent
        return t, req.min_samples or self._policy.routing.verdicts.min_samples

    def _evidence(
        self, window: TimeWindow, suite: str, bakeoff_run_id: str, digest: str = ""
    ) -> tuple[Evidence, str]:
        """The judged runs and their trials, with the recorded-baseline lookup,
        and the suite digest they share: runs of one digest only (the asked
        one, or the newest run's), so two corpora under one name never mix."""
        store = self._store
        rows = store.verdict_runs(window, suite, bakeoff_run_id)
        if bakeoff_run_id and not rows:
            raise NotFound(f"no bakeoff run {bakeoff_run_id!r}")
        digest = digest or (rows[0]["suite_digest"] if rows else "")
        runs = [_run_fact(r) for r in rows if r["suite_digest"] == digest]
        trials = [TrialFact.from_row(r) for r in store.trials_of_runs([r.id for r in runs])]

        def recorded(
            suite: str, version: int, exclude: Sequence[str]
        ) -> tuple[RunFact, list[TrialFact]] | None:
            row = store.baseline_run(suite, version, exclude, common_pb2.ROUTING_MODE_CLOUD, digest)
            if row is None:
                return None
            cloud = store.trials_of_runs([row["id"]], common_pb2.ROUTING_MODE_CLOUD)
            return _run_fact(row), [TrialFact.from_row(r) for r in cloud]

        return Evidence(runs, trials, recorded, suite=runs[0].suite if runs else suite), digest

    async def _verdict(
        self, req: capsule_pb2.CheckThresholdsRequest
    ) -> tuple[capsule_pb2.CheckThresholdsReply, TimeWindow]:
        thresholds, min_samples = self._thresholds(req)
        window = self._window(req.window if req.HasField("window") else None)
        suite = req.suite or self._policy.routing.verdicts.suite

        def form() -> capsule_pb2.CheckThresholdsReply:
            evidence, digest = self._evidence(window, suite, req.bakeoff_run_id, req.suite_digest)
            reply = judge(evidence, thresholds, min_samples, req.model, req.model_identity)
            reply.suite_digest = digest
            return reply

        verdict = await asyncio.to_thread(form)
        # Live statistics beside the verdict: every attempt of the window (or the run's).
        verdict.stats.CopyFrom(await self._stats(window, req.bakeoff_run_id))
        return verdict, window

    async def check_thresholds(
        self, req: capsule_pb2.CheckThresholdsRequest
    ) -> capsule_pb2.CheckThresholdsReply:
        """Does reflex (or one reflex model) hold the promotion thresholds on the bakeoff's evidence?"""
        verdict, _ = await self._timed("thresholds", self._verdict(req))
        return verdict

    async def write_report(
        self, req: capsule_pb2.WriteReportRequest
    ) -> capsule_pb2.WriteReportReply:
        """Write reflex-bakeoff-<timestamp>.json and .md; return paths and verdict."""
        check = capsule_pb2.CheckThresholdsRequest(bakeoff_run_id=req.bakeoff_run_id)
        if req.HasField("window"):
            check.window.CopyFrom(req.window)
        verdict, window = await self._verdict(check)
        run_id = req.bakeoff_run_id
        histogram = await asyncio.to_thread(self._store.latency_histogram, window, run_id)
        trials = await asyncio.to_thread(self._store.trial_summary, window, run_id)
        run = await asyncio.to_thread(self._store.get_run, run_id) if run_id else None
        inputs = ReportInputs(
            generated_at=datetime.fromtimestamp(self._clock_us() / 1e6, UTC),
            verdict=verdict,
            histogram=histogram,
            trials=trials,
            bakeoff_run=run,
        )
        out_dir = self._out_dir(req.out_dir)
        try:
            json_path, md_path = await asyncio.to_thread(write_report, out_dir, inputs)
        except OSError as exc:  # a name too long, a file in the way, no permission, a full disk
            raise _report_write_error(exc, out_dir) from None
        return capsule_pb2.WriteReportReply(
            json_path=str(json_path), markdown_path=str(md_path), verdict=verdict
        )

    def _out_dir(self, asked: str) -> Path:
        """The report folder: the default, or `asked` if it stays under the
        report root (relative = relative to the root; no `..`, and no symlink
        leading out: the resolved path is what is checked)."""
        if not asked:
            return self._report_dir
        root = self._report_root.resolve()
        path = Path(asked)
        if ".." in path.parts:
            raise PermissionDenied(f"out_dir: {asked!r} contains '..'; give a folder under {root}")
        real = (root / path).resolve()  # an absolute `path` replaces root here
        if not real.is_relative_to(root):
            raise PermissionDenied(
                f"out_dir: {asked!r} is outside the service's SPECKIT_HOME ({root})"
            )
        return real

    async def usage(self, req: capsule_pb2.GetUsageRequest) -> capsule_pb2.UsageSummary:
        """Calls and tokens of LLMCall events in the window (for budget caps)."""
        if req.mode not in VALID_MODES:
            raise InvalidArgument(f"unknown mode {req.mode}")
        window = self._window(req.window if req.HasField("window") else None)
        u = await self._timed(
            "usage",
            asyncio.to_thread(self._store.usage, window, common_pb2.EVENT_TYPE_LLM_CALL, req.mode),
        )
        return capsule_pb2.UsageSummary(
            calls=u.calls, prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens
        )

    # -- bakeoff runs and trials ----------------------------------------------

    async def upsert_bakeoff_run(self, run: capsule_pb2.BakeoffRun) -> capsule_pb2.BakeoffRun:
        """Create or update a run; an empty id gets a fresh UUID."""
        if run.mode not in _RUN_MODES:
            raise InvalidArgument(f"bakeoff run mode {run.mode!r} is not reflex, cloud or both")
        if run.status not in _RUN_STATUSES:
            raise InvalidArgument(
                f"bakeoff run status {run.status!r} is not running, done or interrupted"
            )
        row = {
            "id": run.id or str(uuid.uuid4()),
            "suite": redact_text(run.suite),
            "mode": run.mode,
            "status": run.status,
            "started_us": run.started_at.ToMicroseconds() if run.HasField("started_at") else None,
            "finished_us": run.finished_at.ToMicroseconds()
            if run.HasField("finished_at")
            else None,
            "task_count": run.task_count,
            "suite_version": run.suite_version,
            "suite_digest": run.suite_digest,
            "summary": self._run_summary(run),
        }
        return _run_proto(await asyncio.to_thread(self._store.upsert_run, row))

    @staticmethod
    def _run_summary(run: capsule_pb2.BakeoffRun) -> dict[str, Any] | None:
        if not run.HasField("summary"):
            return None
        try:
            summary: dict[str, Any] = redact(struct_to_dict(run.summary))
            return summary
        except MalformedJson as exc:
            raise InvalidArgument(f"bakeoff run summary is malformed: {exc}") from None

    @staticmethod
    def check_trial_batch(req: capsule_pb2.RecordTrialsRequest) -> None:
        """A batch too large for one call is RESOURCE_EXHAUSTED: split it."""
        if len(req.trials) > MAX_BATCH:
            raise ResourceExhausted(
                f"RecordTrials batch of {len(req.trials)} exceeds the limit of {MAX_BATCH}"
            )

    async def record_trials(
        self, req: capsule_pb2.RecordTrialsRequest
    ) -> capsule_pb2.RecordTrialsReply:
        """Store trials, idempotent by trial id."""
        self.check_trial_batch(req)
        now = self._clock_us()
        rows = [_trial_row(t, i, now) for i, t in enumerate(req.trials)]
        inserted = await asyncio.to_thread(self._store.record_trials, rows)
        return capsule_pb2.RecordTrialsReply(inserted=inserted, duplicates=len(rows) - inserted)

    # -- run captures (harvest) -------------------------------------------------

    async def put_run_capture(self, req: capsule_pb2.RunCapture) -> capsule_pb2.PutRunCaptureReply:
        """Store a part of a run's capture; refused unless capture.mode = full_io."""
        refuse_unless_full_io(self._policy.capture.mode)
        now_us = self._clock_us()

        def put() -> dict[str, Any]:
            # Checking and redacting up to MAX_CAPTURE_BYTES of text takes
            # seconds of CPU: on the loop it would stall every other RPC.
            row = capture_row(req, now_us)
            check_fits(self._store.get_capture(row["run_id"]), row)
            return self._store.put_capture(row)

        stored = await asyncio.to_thread(put)
        return capsule_pb2.PutRunCaptureReply(
            has_files=bool(stored["has_files"]), fixed=bool(stored["fixed"])
        )

    async def list_run_captures(
        self, req: capsule_pb2.ListRunCapturesRequest
    ) -> capsule_pb2.ListRunCapturesReply:
        """Captured runs of the window, newest first; refused unless full_io."""
        refuse_unless_full_io(self._policy.capture.mode)
        if req.page_size > MAX_CAPTURE_PAGE:
            raise InvalidArgument(f"page_size {req.page_size} exceeds {MAX_CAPTURE_PAGE}")
        window = self._window(req.window if req.HasField("window") else None)

        def read() -> tuple[list[dict[str, Any]], str, int]:
            rows, token = self._store.list_captures(
                window,
                req.fixed_only,
                req.include_files,
                # With files a capture may be near a reply's size: few are read at once.
                min(req.page_size or DEFAULT_CAPTURE_PAGE, MAX_CAPTURE_PAGE_WITH_FILES)
                if req.include_files
                else req.page_size or DEFAULT_CAPTURE_PAGE,
                req.page_token,
            )
            missing = self._store.fixed_runs_not_captured(window, common_pb2.EVENT_TYPE_LOOP_RESULT)
            return rows, token, missing

        rows, token, missing = await self._timed("captures", asyncio.to_thread(read))
        captures, kept = page_by_size(rows)
        if kept < len(rows):
            token = capture_page_token(rows[kept - 1])
        return capsule_pb2.ListRunCapturesReply(
            captures=captures,
            next_page_token=token,
            fixed_runs_not_captured=missing,
        )

    async def get_run_capture(
        self, req: capsule_pb2.GetRunCaptureRequest
    ) -> capsule_pb2.RunCapture:
        """One run's capture with its files."""
        refuse_unless_full_io(self._policy.capture.mode)
        row = await asyncio.to_thread(self._store.get_capture, req.run_id)
        if row is None:
            raise NotFound(f"no captured workspace for run {req.run_id!r}")
        return capture_proto(row)

    async def close(self) -> None:
        await asyncio.to_thread(self._store.close)
