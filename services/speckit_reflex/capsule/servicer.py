"""Capsule's gRPC servicer: transport only. Proto in, one core call, proto out;
domain errors become statuses in the shared interceptor."""

from __future__ import annotations

from grpc import aio

from speckit_reflex.capsule.core import Capsule
from speckit_reflex.v1 import capsule_pb2, capsule_pb2_grpc


class CapsuleServicer(capsule_pb2_grpc.CapsuleServicer):
    def __init__(self, core: Capsule):
        self._core = core

    async def AppendEvents(self, request: capsule_pb2.AppendEventsRequest, context: aio.ServicerContext) -> capsule_pb2.AppendEventsReply:  # noqa: N802
        return await self._core.append_events(request)

    async def QueryEvents(self, request: capsule_pb2.QueryEventsRequest, context: aio.ServicerContext) -> capsule_pb2.QueryEventsReply:  # noqa: N802
        return await self._core.query_events(request)

    async def GetBakeoffStats(self, request: capsule_pb2.GetBakeoffStatsRequest, context: aio.ServicerContext) -> capsule_pb2.BakeoffStats:  # noqa: N802
        return await self._core.bakeoff_stats(request)

    async def CheckThresholds(self, request: capsule_pb2.CheckThresholdsRequest, context: aio.ServicerContext) -> capsule_pb2.CheckThresholdsReply:  # noqa: N802
        return await self._core.check_thresholds(request)

    async def WriteReport(self, request: capsule_pb2.WriteReportRequest, context: aio.ServicerContext) -> capsule_pb2.WriteReportReply:  # noqa: N802
        return await self._core.write_report(request)

    async def GetUsage(self, request: capsule_pb2.GetUsageRequest, context: aio.ServicerContext) -> capsule_pb2.UsageSummary:  # noqa: N802
        return await self._core.usage(request)

    async def UpsertBakeoffRun(self, request: capsule_pb2.BakeoffRun, context: aio.ServicerContext) -> capsule_pb2.BakeoffRun:  # noqa: N802
        return await self._core.upsert_bakeoff_run(request)

    async def RecordTrials(self, request: capsule_pb2.RecordTrialsRequest, context: aio.ServicerContext) -> capsule_pb2.RecordTrialsReply:  # noqa: N802
        return await self._core.record_trials(request)
