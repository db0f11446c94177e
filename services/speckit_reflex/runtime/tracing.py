"""OpenTelemetry traces, exported over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set.

One `Tracing` per process (like `Metrics`) reaches the services through the
ServiceContext; with the variable unset there is none, and nothing traces:
no interceptor is installed, no span is made, no id is stamped.

Context crosses services in gRPC metadata (W3C `traceparent`) through the
aio interceptors of opentelemetry-instrumentation-grpc, on unary and
streaming calls alike. Events carry their recording span's ids in the
envelope (`Event.trace_id`, `Event.span_id`), so Capsule, which receives
them in batches mixing many runs, stores the ids and records its own store
span inside each run's trace.

Health checks, reflection and AppendEvents are not traced as RPCs: the first
two are probe noise, and an AppendEvents batch belongs to no single trace.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from grpc import aio
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import (
    Span,
    SpanContext,
    TraceFlags,
    Tracer,
    format_span_id,
    format_trace_id,
)

from speckit_reflex.v1 import common_pb2

log = logging.getLogger("speckit.tracing")

TRACER_NAME = "speckit_reflex"
# Methods whose calls make no span (see the module docstring).
UNTRACED_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)
UNTRACED_METHODS = ("/speckit_reflex.v1.Capsule/AppendEvents",)


def _method(details: Any) -> str:
    method = details.method
    return method.decode() if isinstance(method, bytes) else method


def _traced(details: Any) -> bool:
    method = _method(details)
    return (
        method not in UNTRACED_METHODS
        and method.lstrip("/").split("/", 1)[0] not in UNTRACED_SERVICES
    )


class Tracing:
    """A TracerProvider and what the services need from it."""

    def __init__(self, provider: Any):
        # An SDK TracerProvider; typed loosely so this module imports only the API.
        self.provider = provider
        self.tracer: Tracer = provider.get_tracer(TRACER_NAME)

    @classmethod
    def from_env(cls, service: str) -> Tracing | None:
        """OTLP export when OTEL_EXPORTER_OTLP_ENDPOINT (or its traces variant) is set, else None.

        The exporter reads the standard OTEL_EXPORTER_OTLP_* variables itself;
        OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf selects OTLP over HTTP
        (default: gRPC). OTEL_SERVICE_NAME overrides "speckit-<service>".
        """
        env = os.environ
        if not (
            env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        ):
            return None
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

        protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
            "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"
        )
        exporter: SpanExporter
        if protocol.startswith("http"):
            from opentelemetry.exporter.otlp.proto.http import trace_exporter as http_export

            exporter = http_export.OTLPSpanExporter()
        else:
            from opentelemetry.exporter.otlp.proto.grpc import trace_exporter as grpc_export

            exporter = grpc_export.OTLPSpanExporter()
        # Resource.create() reads OTEL_SERVICE_NAME/OTEL_RESOURCE_ATTRIBUTES, but
        # attributes given here would win: name the service only when they do not.
        named = env.get("OTEL_SERVICE_NAME") or "service.name=" in env.get(
            "OTEL_RESOURCE_ATTRIBUTES", ""
        )
        provider = TracerProvider(
            resource=Resource.create({} if named else {SERVICE_NAME: f"speckit-{service}"})
        )
        provider.add_span_processor(BatchSpanProcessor(exporter))
        log.info("tracing on", extra={"fields": {"exporter": f"otlp/{protocol}"}})
        return cls(provider)

    # opentelemetry-instrumentation-grpc leaves both factories unannotated.
    def server_interceptor(self) -> aio.ServerInterceptor:
        from opentelemetry.instrumentation.grpc import aio_server_interceptor

        interceptor: aio.ServerInterceptor = aio_server_interceptor(  # type: ignore[no-untyped-call]
            tracer_provider=self.provider, filter_=_traced
        )
        return interceptor

    def client_interceptors(self) -> list[aio.ClientInterceptor]:
        from opentelemetry.instrumentation.grpc import aio_client_interceptors

        interceptors: list[aio.ClientInterceptor] = aio_client_interceptors(  # type: ignore[no-untyped-call]
            tracer_provider=self.provider, filter_=_traced
        )
        return interceptors

    def stamp(self, event: common_pb2.Event) -> None:
        """Put the current span's ids on an event that has none (sampled spans only)."""
        if event.trace_id:
            return
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid and ctx.trace_flags.sampled:
            event.trace_id = format_trace_id(ctx.trace_id)
            event.span_id = format_span_id(ctx.span_id)

    def shutdown(self) -> None:
        """Export what is still buffered, then stop."""
        self.provider.shutdown()


@contextmanager
def span(tracer: Tracer | None, name: str, **attributes: Any) -> Iterator[Span | None]:
    """A current span named `name`, or nothing at all when `tracer` is None."""
    if tracer is None:
        yield None
        return
    with tracer.start_as_current_span(name, attributes=attributes) as current:
        yield current


def remote_parent(trace_id: str, span_id: str) -> Context:
    """A context whose parent is the span with these hex ids (as stored on an event)."""
    parent = SpanContext(
        int(trace_id, 16),
        int(span_id, 16),
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    return trace.set_span_in_context(trace.NonRecordingSpan(parent))


def current_trace_id() -> str:
    """The current span's trace id in hex, or "" outside any span."""
    ctx = trace.get_current_span().get_span_context()
    return format_trace_id(ctx.trace_id) if ctx.is_valid else ""
