"""Typed async client of the Capsule service, and the seed's JSON form of its
statistics (`stats_to_seed_json`), shared by the CLI and the report writer."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from grpc import aio

from speckit_reflex.v1 import capsule_pb2, capsule_pb2_grpc, common_pb2

# Percent and millisecond figures in the JSON form carry one decimal, as in
# the seed's example ("success_rate": 97.8).
_DECIMALS = 1


def window(
    since: str = "", start: datetime | None = None, end: datetime | None = None
) -> capsule_pb2.Window:
    """A Window: a duration back from now ("24h"), or explicit [start, end)."""
    w = capsule_pb2.Window(since=since)
    if start is not None:
        w.start.FromDatetime(start)
    if end is not None:
        w.end.FromDatetime(end)
    return w


class CapsuleClient:
    """Thin wrapper over the generated stub; returns the v1 protos."""

    def __init__(self, channel: aio.Channel, timeout_s: float | None = 10.0):
        self._stub = capsule_pb2_grpc.CapsuleStub(channel)
        self._timeout = timeout_s

    async def append_events(
        self, events: Sequence[common_pb2.Event]
    ) -> capsule_pb2.AppendEventsReply:
        """Store events; replayed ids are counted as duplicates, not stored twice."""
        return await self._stub.AppendEvents(
            capsule_pb2.AppendEventsRequest(events=events), timeout=self._timeout
        )

    async def query_events(self, **filters: Any) -> capsule_pb2.QueryEventsReply:
        """One page of events; keyword arguments are QueryEventsRequest fields."""
        return await self._stub.QueryEvents(
            capsule_pb2.QueryEventsRequest(**filters), timeout=self._timeout
        )

    async def all_events(self, **filters: Any) -> list[common_pb2.Event]:
        """Every event matching the filters, following page tokens."""
        out: list[common_pb2.Event] = []
        token = ""
        while True:
            reply = await self.query_events(page_token=token, **filters)
            out.extend(reply.events)
            token = reply.next_page_token
            if not token:
                return out

    async def bakeoff_stats(
        self, win: capsule_pb2.Window | None = None, bakeoff_run_id: str = ""
    ) -> capsule_pb2.BakeoffStats:
        """Per mode and per model statistics of PatchAttempt events (default 24h)."""
        req = capsule_pb2.GetBakeoffStatsRequest(
            window=win or window(), bakeoff_run_id=bakeoff_run_id
        )
        return await self._stub.GetBakeoffStats(req, timeout=self._timeout)

    async def check_thresholds(
        self,
        win: capsule_pb2.Window | None = None,
        *,
        thresholds: capsule_pb2.Thresholds | None = None,
        min_samples: int = 0,
        model: str = "",
        bakeoff_run_id: str = "",
        suite: str = "",
        model_identity: str = "",
    ) -> capsule_pb2.CheckThresholdsReply:
        """The verdict of the bakeoff runs in the window (or of one run)
        against the thresholds (policy's unless given)."""
        req = capsule_pb2.CheckThresholdsRequest(
            window=win or window(),
            min_samples=min_samples,
            model=model,
            bakeoff_run_id=bakeoff_run_id,
            suite=suite,
            model_identity=model_identity,
        )
        if thresholds is not None:
            req.thresholds.CopyFrom(thresholds)
        return await self._stub.CheckThresholds(req, timeout=self._timeout)

    async def write_report(
        self, win: capsule_pb2.Window | None = None, out_dir: str = "", bakeoff_run_id: str = ""
    ) -> capsule_pb2.WriteReportReply:
        """Write the JSON and Markdown bakeoff report on the server's disk."""
        req = capsule_pb2.WriteReportRequest(
            window=win or window(), out_dir=out_dir, bakeoff_run_id=bakeoff_run_id
        )
        return await self._stub.WriteReport(req, timeout=self._timeout)

    async def usage(
        self, win: capsule_pb2.Window | None = None, mode: int = 0
    ) -> capsule_pb2.UsageSummary:
        """Calls and tokens of LLMCall events of `mode` (0 = all) in the window."""
        req = capsule_pb2.GetUsageRequest(window=win or window(), mode=mode)  # type: ignore[arg-type]
        return await self._stub.GetUsage(req, timeout=self._timeout)

    async def upsert_bakeoff_run(self, run: capsule_pb2.BakeoffRun) -> capsule_pb2.BakeoffRun:
        """Create or update a bakeoff run; an empty id gets a fresh one."""
        return await self._stub.UpsertBakeoffRun(run, timeout=self._timeout)

    async def record_trials(
        self, trials: Sequence[capsule_pb2.Trial]
    ) -> capsule_pb2.RecordTrialsReply:
        """Store trials; replayed trial ids are counted as duplicates."""
        return await self._stub.RecordTrials(
            capsule_pb2.RecordTrialsRequest(trials=trials), timeout=self._timeout
        )


# Failures whose figures are counts of attempts, written as JSON integers.
_COUNT_FAILURES = frozenset({capsule_pb2.THRESHOLD_FAILURE_KIND_TOO_FEW_SAMPLES})


def threshold_failure_to_json(f: capsule_pb2.ThresholdFailure) -> dict[str, Any]:
    """One failed threshold: kind, message, and the observed and required
    figures (integers for counts, as the proto's doubles would print 20.0)."""
    count = f.kind in _COUNT_FAILURES
    return {
        "kind": capsule_pb2.ThresholdFailureKind.Name(f.kind)
        .removeprefix("THRESHOLD_FAILURE_KIND_")
        .lower(),
        "message": f.message,
        "observed": round(f.observed) if count else f.observed,
        "required": round(f.required) if count else f.required,
    }


def _opt(s: Any, name: str, digits: int = _DECIMALS) -> float | None:
    """An optional figure rounded, or None (null in JSON) when it has no data."""
    return round(getattr(s, name), digits) if s.HasField(name) else None


def mode_stats_to_json(s: capsule_pb2.ModeStats) -> dict[str, Any]:
    """One mode's (or model's) figures in the seed's key names; null where there is no data."""
    out: dict[str, Any] = {
        "total_attempts": s.total_attempts,
        "successes": s.successes,
        "success_rate": _opt(s, "success_rate"),
        # Over replies received; errors (no reply) are counted apart.
        "json_compliance_rate": _opt(s, "json_compliance_rate"),
        "replies": s.replies,
        "errors": s.errors,
        "availability_percent": _opt(s, "availability_percent"),
        "p50_latency_ms": _opt(s, "p50_latency_ms"),
        "p95_latency_ms": _opt(s, "p95_latency_ms"),
        "p50_ttft_ms": _opt(s, "p50_ttft_ms"),
        "p95_ttft_ms": _opt(s, "p95_ttft_ms"),
        "mean_tokens_per_s": _opt(s, "mean_tokens_per_s"),
        "cache_hit_rate": _opt(s, "cache_hit_rate", 3),
        "cache_reported_attempts": s.cache_reported_attempts,
        # "exact", or "histogram" (<= 1 % relative error) over large windows.
        "percentile_method": s.percentile_method or None,
    }
    return out


def stats_to_seed_json(stats: capsule_pb2.BakeoffStats) -> dict[str, Any]:
    """`{"period": "24h", "reflex": {...}, "cloud": {...}, "models": [...]}` (SPEC-KIT-978)."""
    return {
        "period": stats.period,
        "start": stats.start.ToDatetime().isoformat() + "Z",
        "end": stats.end.ToDatetime().isoformat() + "Z",
        "reflex": mode_stats_to_json(stats.reflex),
        "cloud": mode_stats_to_json(stats.cloud),
        "models": [
            {
                "mode": common_pb2.RoutingMode.Name(m.mode).removeprefix("ROUTING_MODE_").lower(),
                "model": m.model,
                **mode_stats_to_json(m.stats),
            }
            for m in stats.models
        ],
    }


def _enum_name(enum: Any, value: int, prefix: str) -> str:
    return str(enum.Name(value)).removeprefix(prefix).lower()


def verdict_figures_to_json(f: capsule_pb2.VerdictFigures) -> dict[str, Any]:
    """One mode's figures on the judged tasks; null where there is no data."""
    return {
        "model": f.model or None,
        "model_identity": f.model_identity or None,
        "tasks": f.tasks,
        "fixed": f.fixed,
        "success_rate": _opt(f, "success_rate"),
        "pass_at_1": _opt(f, "pass_at_1"),
        "model_calls": f.model_calls,
        "replies": f.replies,
        "errors": f.errors,
        "json_compliance_rate": _opt(f, "json_compliance_rate"),
        "availability_percent": _opt(f, "availability_percent"),
        "p50_latency_ms": _opt(f, "p50_latency_ms"),
        "p95_latency_ms": _opt(f, "p95_latency_ms"),
        "skipped": f.skipped,
    }


def verdict_to_json(v: capsule_pb2.CheckThresholdsReply) -> dict[str, Any]:
    """The verdict for machines (CLI --json and the report): every threshold
    with its status, the evidence it was formed from, and the live statistics
    apart."""
    b = v.baseline
    t = v.thresholds
    return {
        "status": _enum_name(capsule_pb2.ThresholdStatus, v.status, "THRESHOLD_STATUS_")
        if v.status
        else "not_judged",
        "passed": v.passed,
        "invalidated": v.invalidated or None,
        "model": v.model or None,
        "suite": v.suite or None,
        "suite_version": v.suite_version or None,
        "bakeoff_run_ids": list(v.bakeoff_run_ids),
        "min_samples": v.min_samples,
        "thresholds": {
            "p95_latency_ms": t.p95_latency_ms,
            "success_parity_percent": t.success_parity_percent,
            "json_schema_compliance_percent": t.json_schema_compliance_percent,
            "absolute_success_percent": _opt(t, "absolute_success_percent"),
        },
        "baseline": {
            "kind": b.kind or "none",
            "bakeoff_run_id": b.bakeoff_run_id or None,
            "recorded_at": b.recorded_at.ToDatetime().isoformat() + "Z"
            if b.HasField("recorded_at")
            else None,
            "description": b.description or None,
        },
        "paired_tasks": v.paired_tasks,
        "unpaired_tasks": v.unpaired_tasks,
        "success_parity_percent": _opt(v, "success_parity_percent"),
        "reflex": verdict_figures_to_json(v.reflex),
        "cloud": verdict_figures_to_json(v.cloud),
        "results": [
            {
                "name": r.name,
                "status": _enum_name(capsule_pb2.ThresholdStatus, r.status, "THRESHOLD_STATUS_"),
                "observed": _opt(r, "observed"),
                "required": r.required,
                "comparison": r.comparison,
                "message": r.message,
            }
            for r in v.results
        ],
        "failures": [threshold_failure_to_json(f) for f in v.failures],
        "live_statistics": stats_to_seed_json(v.stats),
    }
