"""Capsule's gRPC servicer: transport only. Proto in, one core call, proto out;
domain errors become statuses in the shared interceptor."""

from __future__ import annotations

import math

from grpc import aio

from speckit_reflex.capsule.captures import MAX_ERRORS, MAX_FILES
from speckit_reflex.capsule.core import MAX_BATCH, MAX_CAPTURE_PAGE, MAX_PAGE_SIZE, Capsule
from speckit_reflex.capsule.events import MAX_ID_LEN, TEXT_LIMITS
from speckit_reflex.runtime.validate import INT32_MAX, Items, Range, Rules, Text, check_message
from speckit_reflex.v1 import capsule_pb2, capsule_pb2_grpc

# Field rules of each request (runtime.validate adds what holds for every
# field: no NUL, bounded text and lists, known enums, finite numbers, valid
# Timestamps). AppendEvents is checked per event on ingest (capsule.events),
# where the walk would cost too much.
_ID = Text(MAX_ID_LEN)
_EVENT_TEXT: Rules = {name: Text(limit) for name, limit in TEXT_LIMITS}
_WINDOW: Rules = {"window.since": Text(16)}
_PERCENT = Range(0, 1e6)
_NON_NEGATIVE = Range(0, math.inf)
QUERY_EVENTS: Rules = {**_EVENT_TEXT, "page_size": Range(0, MAX_PAGE_SIZE), "page_token": Text(512)}
BAKEOFF_STATS: Rules = {**_WINDOW, "bakeoff_run_id": _ID}
CHECK_THRESHOLDS: Rules = {
    **_WINDOW,
    "model": Text(256),
    "min_samples": Range(0, INT32_MAX),
    "thresholds.p95_latency_ms": _NON_NEGATIVE,
    "thresholds.success_parity_percent": _PERCENT,
    "thresholds.json_schema_compliance_percent": _PERCENT,
    "thresholds.absolute_success_percent": Range(0, 100),
    "bakeoff_run_id": _ID,
    "suite": Text(256),
    "model_identity": Text(1024),
    "suite_digest": Text(128),
}
WRITE_REPORT: Rules = {**_WINDOW, "out_dir": Text(4096), "bakeoff_run_id": _ID}
USAGE: Rules = _WINDOW
BAKEOFF_RUN: Rules = {
    "id": _ID,
    "suite": Text(256),
    "mode": Text(16),
    "status": Text(16),
    "suite_digest": Text(128),
}
# File contents are bounded as a whole (capsule.captures), not per field.
_FILE_TEXT = Text(16_000_000)
RUN_CAPTURE: Rules = {
    "run_id": Text(MAX_ID_LEN, required=True),
    "session_id": Text(256),
    "workspace": Text(4096),
    "files": Items(MAX_FILES),
    "files.path": Text(4096),
    "files.content": _FILE_TEXT,
    "skipped": Text(4096),
    "errors": Items(MAX_ERRORS),
    "errors.code": Text(64),
    "errors.message": Text(8192),
    "errors.file": Text(4096),
    "build_profile": Text(128),
    "verify_profile": Text(128),
    "fixed_by": Text(16),
    "diff": _FILE_TEXT,
    "fix_files": Items(MAX_FILES),
    "fix_files.path": Text(4096),
    "fix_files.content": _FILE_TEXT,
}
LIST_CAPTURES: Rules = {
    **_WINDOW,
    "page_size": Range(0, MAX_CAPTURE_PAGE),
    "page_token": Text(512),
}
GET_CAPTURE: Rules = {"run_id": Text(MAX_ID_LEN, required=True)}
TRIALS: Rules = {
    "trials": Items(MAX_BATCH),
    "trials.id": Text(MAX_ID_LEN, required=True),
    "trials.bakeoff_run_id": _ID,
    "trials.task_id": Text(256),
    "trials.category": Text(128),
    "trials.model": Text(256),
    "trials.backend": Text(128),
    "trials.reason": Text(4096),
    "trials.run_id": _ID,
    "trials.latency_ms": _NON_NEGATIVE,
    "trials.ttft_ms": _NON_NEGATIVE,
    "trials.tokens_per_s": _NON_NEGATIVE,
    "trials.call_latency_ms": _NON_NEGATIVE,
    "trials.model_identity": Text(1024),
    "trials.lint": Text(4096),
}


class CapsuleServicer(capsule_pb2_grpc.CapsuleServicer):
    def __init__(self, core: Capsule):
        self._core = core

    async def AppendEvents(
        self,
        request: capsule_pb2.AppendEventsRequest,
        context: aio.ServicerContext[
            capsule_pb2.AppendEventsRequest, capsule_pb2.AppendEventsReply
        ],
    ) -> capsule_pb2.AppendEventsReply:
        return await self._core.append_events(request)

    async def QueryEvents(
        self,
        request: capsule_pb2.QueryEventsRequest,
        context: aio.ServicerContext[capsule_pb2.QueryEventsRequest, capsule_pb2.QueryEventsReply],
    ) -> capsule_pb2.QueryEventsReply:
        check_message(request, QUERY_EVENTS)
        return await self._core.query_events(request)

    async def GetBakeoffStats(
        self,
        request: capsule_pb2.GetBakeoffStatsRequest,
        context: aio.ServicerContext[capsule_pb2.GetBakeoffStatsRequest, capsule_pb2.BakeoffStats],
    ) -> capsule_pb2.BakeoffStats:
        check_message(request, BAKEOFF_STATS)
        return await self._core.bakeoff_stats(request)

    async def CheckThresholds(
        self,
        request: capsule_pb2.CheckThresholdsRequest,
        context: aio.ServicerContext[
            capsule_pb2.CheckThresholdsRequest, capsule_pb2.CheckThresholdsReply
        ],
    ) -> capsule_pb2.CheckThresholdsReply:
        check_message(request, CHECK_THRESHOLDS)
        return await self._core.check_thresholds(request)

    async def WriteReport(
        self,
        request: capsule_pb2.WriteReportRequest,
        context: aio.ServicerContext[capsule_pb2.WriteReportRequest, capsule_pb2.WriteReportReply],
    ) -> capsule_pb2.WriteReportReply:
        check_message(request, WRITE_REPORT)
        return await self._core.write_report(request)

    async def GetUsage(
        self,
        request: capsule_pb2.GetUsageRequest,
        context: aio.ServicerContext[capsule_pb2.GetUsageRequest, capsule_pb2.UsageSummary],
    ) -> capsule_pb2.UsageSummary:
        check_message(request, USAGE)
        return await self._core.usage(request)

    async def UpsertBakeoffRun(
        self,
        request: capsule_pb2.BakeoffRun,
        context: aio.ServicerContext[capsule_pb2.BakeoffRun, capsule_pb2.BakeoffRun],
    ) -> capsule_pb2.BakeoffRun:
        check_message(request, BAKEOFF_RUN)
        return await self._core.upsert_bakeoff_run(request)

    async def RecordTrials(
        self,
        request: capsule_pb2.RecordTrialsRequest,
        context: aio.ServicerContext[
            capsule_pb2.RecordTrialsRequest, capsule_pb2.RecordTrialsReply
        ],
    ) -> capsule_pb2.RecordTrialsReply:
        self._core.check_trial_batch(request)
        check_message(request, TRIALS)
        return await self._core.record_trials(request)

    async def PutRunCapture(
        self,
        request: capsule_pb2.RunCapture,
        context: aio.ServicerContext[capsule_pb2.RunCapture, capsule_pb2.PutRunCaptureReply],
    ) -> capsule_pb2.PutRunCaptureReply:
        check_message(request, RUN_CAPTURE)
        return await self._core.put_run_capture(request)

    async def ListRunCaptures(
        self,
        request: capsule_pb2.ListRunCapturesRequest,
        context: aio.ServicerContext[
            capsule_pb2.ListRunCapturesRequest, capsule_pb2.ListRunCapturesReply
        ],
    ) -> capsule_pb2.ListRunCapturesReply:
        check_message(request, LIST_CAPTURES)
        return await self._core.list_run_captures(request)

    async def GetRunCapture(
        self,
        request: capsule_pb2.GetRunCaptureRequest,
        context: aio.ServicerContext[capsule_pb2.GetRunCaptureRequest, capsule_pb2.RunCapture],
    ) -> capsule_pb2.RunCapture:
        check_message(request, GET_CAPTURE)
        return await self._core.get_run_capture(request)
