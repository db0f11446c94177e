"""Prometheus metrics of one process, served on /metrics when SPECKIT_METRICS_ADDR is set.

One `Metrics` object per process owns its own CollectorRegistry (no module
globals), and reaches the cores through their constructors; `serve all`
builds one for its four services, so they share one endpoint. When the
address is unset no `Metrics` exists and the cores skip recording entirely.

Counters and histograms are updated where things happen (an RPC ends, a
decision is made, a model call is recorded). State (backend health and
cooldown, verdicts, event backlog) is read at scrape time through
`state()` sources, so the hot paths pay nothing for it.

The HTTP side runs on the service's event loop (aiohttp, already a
dependency), so scrape-time reads of in-memory state never race the loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any, cast

import grpc
from grpc import aio
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from speckit_reflex.runtime.handlers import (
    Context,
    Continuation,
    MethodHandler,
    StreamBehaviour,
    UnaryBehaviour,
)

log = logging.getLogger("speckit.metrics")

# Bucket bounds in seconds, per kind of duration measured.
RPC_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
MODEL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
BUILD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
DB_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

#: a state source returns (label values, value) pairs at scrape time
StateSource = Callable[[], Iterable[tuple[Sequence[str], float]]]


class _StateFamily(Collector):
    """One metric family whose samples come from sources read at scrape time.

    Several services of one process (three event sinks under `serve all`)
    add sources to the same family, so the exposition has each name once.
    """

    def __init__(self, name: str, documentation: str, labels: Sequence[str], kind: str):
        self._name, self._doc, self._labels, self._kind = name, documentation, list(labels), kind
        self._sources: list[StateSource] = []

    def add(self, source: StateSource) -> None:
        self._sources.append(source)

    def _family(self) -> GaugeMetricFamily | CounterMetricFamily:
        cls = GaugeMetricFamily if self._kind == "gauge" else CounterMetricFamily
        return cls(self._name, self._doc, labels=self._labels)

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        for source in self._sources:
            for labels, value in source():
                family.add_metric(list(labels), value)
        return [family]


class _Children:
    """Labelled children of one metric, cached: `labels()` costs microseconds
    (a lock and a tuple per call); a dict hit costs a tenth of that."""

    def __init__(self, metric: Counter | Histogram):
        self._metric = metric
        self._cache: dict[tuple[str, ...], Any] = {}

    def __call__(self, *labels: str) -> Any:
        child = self._cache.get(labels)
        if child is None:
            child = self._cache[labels] = self._metric.labels(*labels)
        return child


class Metrics:
    """Every speckit metric of one process, registered in its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self._states: dict[str, _StateFamily] = {}
        self.rpc_handled = _Children(
            Counter(
                "speckit_rpc_server_handled",
                "RPCs completed by the server, by status code",
                ["service", "method", "code"],
                registry=r,
            )
        )
        self.rpc_seconds = _Children(
            Histogram(
                "speckit_rpc_server_handling_seconds",
                "Time from an RPC's arrival to its last response",
                ["service", "method"],
                buckets=RPC_BUCKETS,
                registry=r,
            )
        )
        self.routing_decisions = _Children(
            Counter(
                "speckit_routing_decisions",
                'Router decisions (refusals have mode "none")',
                ["mode", "reason", "model"],
                registry=r,
            )
        )
        self.model_calls = _Children(
            Counter(
                "speckit_model_calls",
                "Model calls by the Inference Adapter",
                ["backend", "model", "outcome", "schema_valid"],
                registry=r,
            )
        )
        self.model_ttft = _Children(
            Histogram(
                "speckit_model_ttft_seconds",
                "Time to first token of a model call",
                ["backend", "model"],
                buckets=TTFT_BUCKETS,
                registry=r,
            )
        )
        self.model_seconds = _Children(
            Histogram(
                "speckit_model_call_seconds",
                "Whole model call, retries and failover included",
                ["backend", "model"],
                buckets=MODEL_BUCKETS,
                registry=r,
            )
        )
        self.model_tokens = _Children(
            Counter(
                "speckit_model_tokens",
                "Tokens of model calls (kind: prompt, completion, cached)",
                ["backend", "model", "kind"],
                registry=r,
            )
        )
        self.patchloop_runs = _Children(
            Counter(
                "speckit_patchloop_runs",
                "PatchLoop runs finished, by outcome",
                ["outcome"],
                registry=r,
            )
        )
        self.build_seconds = _Children(
            Histogram(
                "speckit_patchloop_build_seconds",
                "One build (step: compile or verify) in the sandbox",
                ["step"],
                buckets=BUILD_BUCKETS,
                registry=r,
            )
        )
        self.capsule_ingest_seconds = Histogram(
            "speckit_capsule_ingest_seconds",
            "One AppendEvents batch: validation, capture and insert",
            buckets=DB_BUCKETS,
            registry=r,
        )
        self.capsule_events = _Children(
            Counter(
                "speckit_capsule_events_ingested",
                "Events offered to Capsule (result: inserted or duplicate)",
                ["result"],
                registry=r,
            )
        )
        self.capsule_query_seconds = _Children(
            Histogram(
                "speckit_capsule_query_seconds",
                "Capsule reads (query: events, stats, thresholds, usage, captures)",
                ["query"],
                buckets=DB_BUCKETS,
                registry=r,
            )
        )

    def state(
        self, name: str, documentation: str, labels: Sequence[str], kind: str = "gauge"
    ) -> _StateFamily:
        """The scrape-time family `name` (created on first use); add sources to it."""
        family = self._states.get(name)
        if family is None:
            family = self._states[name] = _StateFamily(name, documentation, labels, kind)
            self.registry.register(family)
        return family

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def watch_event_sink(metrics: Metrics, service: str, sink: Any) -> None:
    """Backlog and delivery counters of a service's EventSink, read at scrape time."""
    metrics.state(
        "speckit_event_sink_backlog", "Events queued or in flight to Capsule", ["service"]
    ).add(lambda: [((service,), sink.pending)])
    metrics.state(
        "speckit_event_sink_sent", "Events delivered to Capsule", ["service"], "counter"
    ).add(lambda: [((service,), sink.sent)])
    metrics.state(
        "speckit_event_sink_dropped",
        "Events dropped (buffer full, or refused by Capsule)",
        ["service"],
        "counter",
    ).add(lambda: [((service,), sink.dropped)])
    metrics.state(
        "speckit_event_sink_dead_lettered",
        "Events Capsule refused for good, kept in the dead-letter file",
        ["service"],
        "counter",
    ).add(lambda: [((service,), sink.dead_lettered)])


# -- the RPC interceptor ---------------------------------------------------------------


def _status_of(context: Context) -> str:
    # grpc.aio answers None before a code is set, and keeps an int set with
    # set_code(int) as it is (its stubs say StatusCode only).
    code: grpc.StatusCode | int | None = context.code()
    if code is None:
        return "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    # grpc keeps the integer a handler set with set_code(int)
    return next((c.name for c in grpc.StatusCode if c.value[0] == code), str(code))


class RpcMetricsInterceptor(aio.ServerInterceptor):
    """Counts every RPC by method and status code and times it.

    The outermost interceptor, so it sees refusals by auth and by validation
    too. Handlers are wrapped once per handler object: the inner interceptors
    hand back the same object per method unless they substitute one (a denial).
    """

    def __init__(self, metrics: Metrics, service: str):
        self._metrics = metrics
        self._service = service
        self._wrapped: dict[str, tuple[MethodHandler, MethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Continuation,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> MethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        path = handler_call_details.method
        cached = self._wrapped.get(path)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, path.rsplit("/", 1)[-1])
        self._wrapped[path] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: MethodHandler, method: str) -> MethodHandler:
        m, service = self._metrics, self._service
        seconds = m.rpc_seconds(service, method)

        def done(started: float, context: Context, exc: BaseException | None) -> None:
            seconds.observe(time.perf_counter() - started)
            if exc is None or isinstance(exc, aio.AbortError):
                code = _status_of(context)
            else:  # a bug below the error interceptor, or the call cancelled
                code = "UNKNOWN" if isinstance(exc, Exception) else "CANCELLED"
            m.rpc_handled(service, method, code).inc()

        if handler.unary_unary:
            fn = cast(UnaryBehaviour, handler.unary_unary)

            async def unary(request: Any, context: Context) -> Any:
                started, failure = time.perf_counter(), None
                try:
                    return await fn(request, context)
                except BaseException as exc:
                    failure = exc
                    raise
                finally:
                    done(started, context, failure)

            return grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            fn_stream = cast(StreamBehaviour, handler.unary_stream)

            async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
                started, failure = time.perf_counter(), None
                try:
                    async for item in fn_stream(request, context):
                        yield item
                except BaseException as exc:
                    failure = exc
                    raise
                finally:
                    done(started, context, failure)

            return grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # no client-streaming methods in the v1 API


# -- the /metrics endpoint -------------------------------------------------------------


class MetricsServer:
    """GET /metrics over HTTP on the event loop of the services it reports."""

    def __init__(self, metrics: Metrics, addr: str):
        self._metrics = metrics
        self._addr = addr
        self._runner: Any = None
        self.address = ""

    async def start(self) -> str:
        from aiohttp import web

        host, _, port = self._addr.rpartition(":")
        if not host or not port.isdigit():
            raise OSError(f"SPECKIT_METRICS_ADDR {self._addr!r} is not host:port")

        async def scrape(_request: web.Request) -> web.Response:
            return web.Response(
                body=self._metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
            )

        app = web.Application()
        app.router.add_get("/metrics", scrape)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, host.strip("[]"), int(port), reuse_port=False).start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(
                f"metrics: cannot listen on {self._addr}: {exc.strerror or exc}"
            ) from None
        self._runner = runner
        self.address = f"{host}:{runner.addresses[0][1]}"
        log.info("metrics serving", extra={"fields": {"address": self.address, "path": "/metrics"}})
        return self.address

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
