"""Typed async client of the Capsule service. The JSON forms of its replies
(statistics, verdict) are contract, in `speckit_reflex.contract`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from grpc import aio

from speckit_reflex.v1 import capsule_pb2, capsule_pb2_grpc, common_pb2


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
        suite_digest: str = "",
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
            suite_digest=suite_digest,
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
        self,
        win: capsule_pb2.Window | None = None,
        mode: common_pb2.RoutingMode.ValueType = common_pb2.ROUTING_MODE_UNSPECIFIED,
    ) -> capsule_pb2.UsageSummary:
        """Calls and tokens of LLMCall events of `mode` (unspecified = all) in the window."""
        req = capsule_pb2.GetUsageRequest(window=win or window(), mode=mode)
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

    async def put_run_capture(
        self, capture: capsule_pb2.RunCapture
    ) -> capsule_pb2.PutRunCaptureReply:
        """Store a part of a run's capture (FAILED_PRECONDITION unless full_io)."""
        return await self._stub.PutRunCapture(capture, timeout=self._timeout)

    async def list_run_captures(
        self,
        win: capsule_pb2.Window | None = None,
        *,
        fixed_only: bool = False,
        include_files: bool = False,
        page_size: int = 0,
        page_token: str = "",
    ) -> capsule_pb2.ListRunCapturesReply:
        """One page of captured runs of the window, newest first."""
        req = capsule_pb2.ListRunCapturesRequest(
            window=win or window(),
            fixed_only=fixed_only,
            include_files=include_files,
            page_size=page_size,
            page_token=page_token,
        )
        return await self._stub.ListRunCaptures(req, timeout=self._timeout)

    async def all_run_captures(
        self, win: capsule_pb2.Window | None = None, *, fixed_only: bool = False
    ) -> tuple[list[capsule_pb2.RunCapture], int]:
        """Every captured run of the window (records without files), newest
        first, and how many fixed runs of it were not captured."""
        out: list[capsule_pb2.RunCapture] = []
        token = ""
        while True:
            reply = await self.list_run_captures(
                win, fixed_only=fixed_only, page_size=200, page_token=token
            )
            out.extend(reply.captures)
            token = reply.next_page_token
            if not token:
                return out, reply.fixed_runs_not_captured

    async def get_run_capture(self, run_id: str) -> capsule_pb2.RunCapture:
        """One captured run with its files and its fix."""
        return await self._stub.GetRunCapture(
            capsule_pb2.GetRunCaptureRequest(run_id=run_id), timeout=self._timeout
        )
