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


def window(since: str = "", start: datetime | None = None, end: datetime | None = None) -> capsule_pb2.Window:
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

    async def append_events(self, events: Sequence[common_pb2.Event]) -> capsule_pb2.AppendEventsReply:
        """Store events; replayed ids are counted as duplicates, not stored twice."""
        return await self._stub.AppendEvents(capsule_pb2.AppendEventsRequest(events=events), timeout=self._timeout)

    async def query_events(self, **filters: Any) -> capsule_pb2.QueryEventsReply:
        """One page of events; keyword arguments are QueryEventsRequest fields."""
        return await self._stub.QueryEvents(capsule_pb2.QueryEventsRequest(**filters), timeout=self._timeout)

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
        req = capsule_pb2.GetBakeoffStatsRequest(window=win or window(), bakeoff_run_id=bakeoff_run_id)
        return await self._stub.GetBakeoffStats(req, timeout=self._timeout)

    async def check_thresholds(
        self,
        win: capsule_pb2.Window | None = None,
        *,
        thresholds: capsule_pb2.Thresholds | None = None,
        min_samples: int = 0,
        model: str = "",
    ) -> capsule_pb2.CheckThresholdsReply:
        """Pass/fail of reflex against the thresholds (policy's unless given)."""
        req = capsule_pb2.CheckThresholdsRequest(window=win or window(), min_samples=min_samples, model=model)
        if thresholds is not None:
            req.thresholds.CopyFrom(thresholds)
        return await self._stub.CheckThresholds(req, timeout=self._timeout)

    async def write_report(
        self, win: capsule_pb2.Window | None = None, out_dir: str = "", bakeoff_run_id: str = ""
    ) -> capsule_pb2.WriteReportReply:
        """Write the JSON and Markdown bakeoff report on the server's disk."""
        req = capsule_pb2.WriteReportRequest(window=win or window(), out_dir=out_dir, bakeoff_run_id=bakeoff_run_id)
        return await self._stub.WriteReport(req, timeout=self._timeout)

    async def usage(self, win: capsule_pb2.Window | None = None, mode: int = 0) -> capsule_pb2.UsageSummary:
        """Calls and tokens of LLMCall events of `mode` (0 = all) in the window."""
        req = capsule_pb2.GetUsageRequest(window=win or window(), mode=mode)  # type: ignore[arg-type]
        return await self._stub.GetUsage(req, timeout=self._timeout)

    async def upsert_bakeoff_run(self, run: capsule_pb2.BakeoffRun) -> capsule_pb2.BakeoffRun:
        """Create or update a bakeoff run; an empty id gets a fresh one."""
        return await self._stub.UpsertBakeoffRun(run, timeout=self._timeout)

    async def record_trials(self, trials: Sequence[capsule_pb2.Trial]) -> capsule_pb2.RecordTrialsReply:
        """Store trials; replayed trial ids are counted as duplicates."""
        return await self._stub.RecordTrials(capsule_pb2.RecordTrialsRequest(trials=trials), timeout=self._timeout)


# Failures whose figures are counts of attempts, written as JSON integers.
_COUNT_FAILURES = frozenset({capsule_pb2.THRESHOLD_FAILURE_KIND_TOO_FEW_SAMPLES})


def threshold_failure_to_json(f: capsule_pb2.ThresholdFailure) -> dict[str, Any]:
    """One failed threshold: kind, message, and the observed and required
    figures (integers for counts, as the proto's doubles would print 20.0)."""
    count = f.kind in _COUNT_FAILURES
    return {
        "kind": capsule_pb2.ThresholdFailureKind.Name(f.kind).removeprefix("THRESHOLD_FAILURE_KIND_").lower(),
        "message": f.message,
        "observed": round(f.observed) if count else f.observed,
        "required": round(f.required) if count else f.required,
    }


def _r(x: float) -> float:
    return round(x, _DECIMALS)


def mode_stats_to_json(s: capsule_pb2.ModeStats) -> dict[str, Any]:
    """One mode's (or model's) figures in the seed's key names."""
    out: dict[str, Any] = {
        "total_attempts": s.total_attempts,
        "successes": s.successes,
        "success_rate": _r(s.success_rate),
        "json_compliance_rate": _r(s.json_compliance_rate),
        "p50_latency_ms": _r(s.p50_latency_ms),
        "p95_latency_ms": _r(s.p95_latency_ms),
        "p50_ttft_ms": _r(s.p50_ttft_ms) if s.HasField("p50_ttft_ms") else None,
        "p95_ttft_ms": _r(s.p95_ttft_ms) if s.HasField("p95_ttft_ms") else None,
        "mean_tokens_per_s": _r(s.mean_tokens_per_s),
        "cache_hit_rate": round(s.cache_hit_rate, 3) if s.HasField("cache_hit_rate") else None,
        "cache_reported_attempts": s.cache_reported_attempts,
        # "exact", or "histogram" (<= 1 % relative error) over large windows.
        "percentile_method": s.percentile_method or "exact",
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
