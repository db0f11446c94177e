"""Tracing from the environment: nothing without an OTLP endpoint; with one,
spans reach a real OTLP/gRPC receiver (opentelemetry-proto's TraceService on
port 0), named after the service."""

from __future__ import annotations

from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from speckit_reflex.runtime.tracing import Tracing


class _Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    def Export(self, request, context):
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


def test_no_endpoint_no_tracing(monkeypatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "x")
    assert Tracing.from_env("router") is None


def test_spans_reach_an_otlp_receiver(monkeypatch) -> None:
    receiver = _Receiver()
    # The exporter is synchronous (a worker thread), so a thread-pool server receives.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
        monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
        tracing = Tracing.from_env("router")
        assert tracing is not None
        with tracing.tracer.start_as_current_span("router.decide"):
            pass
        assert tracing.provider.force_flush(10_000)
        tracing.shutdown()
    finally:
        server.stop(0)
    (request,) = receiver.requests
    (resource_spans,) = request.resource_spans
    attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert attrs["service.name"] == "speckit-router"
    assert [s.name for ss in resource_spans.scope_spans for s in ss.spans] == ["router.decide"]
