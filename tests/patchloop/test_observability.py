"""Metrics and traces of a real PatchLoop run across the four services.

Metrics are scraped over HTTP from the process's /metrics endpoint before and
after a run; traces go to an in-memory exporter. The model server is the
vLLM-shaped fake (tests/inference/fakes.py) answering the fixing patch, so the
run is fixed by reflex on attempt 1.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import grpc
import httpx
import pytest
from grpc import aio
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, format_span_id, format_trace_id
from patchloop_support import FIXED_LINE
from prometheus_client.parser import text_string_to_metric_families
from test_patchloop_e2e import CLOUD_KEY_ENV, capsule_events, start_stack, write_policy

from speckit_reflex.clients.capsule import CapsuleClient
from speckit_reflex.clients.inference import InferenceClient
from speckit_reflex.clients.patchloop import PatchLoopClient
from speckit_reflex.runtime.logs import _JsonFormatter
from speckit_reflex.runtime.tracing import Tracing
from speckit_reflex.v1 import common_pb2, patchloop_pb2
from tests.inference.fakes import FakeModelServer
from tests.waiting import eventually

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(address: str) -> Samples:
    async with httpx.AsyncClient() as http:
        reply = await http.get(f"http://{address}/metrics", timeout=10)
    reply.raise_for_status()
    assert reply.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(reply.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.fixture
async def fixing_model():
    server = await FakeModelServer(
        kind="vllm", models=["local-model"], reply=json.dumps(FIXED_LINE)
    ).start()
    yield server
    await server.stop()


async def test_metrics_move_after_a_real_run(
    crate, services_factory, tmp_path: Path, fixing_model, monkeypatch
):
    monkeypatch.setenv(CLOUD_KEY_ENV, "sk-test-cloud")
    pol = write_policy(
        tmp_path,
        kind="vllm",
        endpoint=fixing_model.base_url,
        model="local-model",
        cloud_endpoint="http://127.0.0.1:9/v1",
    )
    svc = await start_stack(
        services_factory, tmp_path, pol, "local-model", metrics_addr="127.0.0.1:0"
    )
    address = svc.ctx.metrics_server.address
    before = await scrape(address)

    client = PatchLoopClient(svc.ctx.channel("patchloop"))
    _, result = await client.run_to_end(
        str(crate("field_typo")), run_id="metrics-run", timeout_s=120
    )
    assert (
        result.outcome == patchloop_pb2.OUTCOME_FIXED
        and result.fixed_by == patchloop_pb2.FIX_SOURCE_REFLEX
    )
    with pytest.raises(grpc.aio.AioRpcError):
        await client.get_run("no-such-run")

    # Events reach Capsule in the background: wait until every sink delivered
    # the run's (a sink counts an event sent once Capsule stored it).
    deadline = time.monotonic() + 15
    while True:
        after = await scrape(address)
        delivered = moved(
            before, after, "speckit_event_sink_sent_total", service="patchloop"
        ) == 2 and not any(
            value(after, "speckit_event_sink_backlog", service=s)
            for s in ("router", "inference", "patchloop")
        )
        if delivered or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    stored = moved(before, after, "speckit_capsule_events_ingested_total", result="inserted")

    rpc = "speckit_rpc_server_handled_total"
    assert moved(before, after, rpc, service="patchloop", method="Run", code="OK") == 1
    assert moved(before, after, rpc, service="patchloop", method="GetRun", code="NOT_FOUND") == 1
    assert moved(before, after, rpc, service="router", method="Decide", code="OK") == 1
    assert moved(before, after, rpc, service="inference", method="StreamComplete", code="OK") == 1
    assert moved(before, after, rpc, service="capsule", method="AppendEvents", code="OK") >= 1
    assert (
        moved(
            before,
            after,
            "speckit_rpc_server_handling_seconds_count",
            service="patchloop",
            method="Run",
        )
        == 1
    )
    assert (
        moved(
            before,
            after,
            "speckit_routing_decisions_total",
            mode="reflex",
            reason="healthy_and_thresholds_met",
            model="local-model",
        )
        == 1
    )
    call = {"backend": "local", "model": "local-model"}
    assert (
        moved(before, after, "speckit_model_calls_total", **call, outcome="ok", schema_valid="true")
        == 1
    )
    assert moved(before, after, "speckit_model_ttft_seconds_count", **call) == 1
    assert moved(before, after, "speckit_model_call_seconds_sum", **call) > 0
    assert moved(before, after, "speckit_model_tokens_total", **call, kind="completion") > 0
    assert moved(before, after, "speckit_patchloop_runs_total", outcome="fixed") == 1
    assert moved(before, after, "speckit_patchloop_build_seconds_count", step="compile") == 2
    assert stored >= 4  # RoutingDecision, LLMCall, PatchAttempt, LoopResult
    assert moved(before, after, "speckit_capsule_ingest_seconds_count") >= 1
    assert moved(before, after, "speckit_event_sink_sent_total", service="patchloop") == 2
    assert value(after, "speckit_event_sink_backlog", service="patchloop") == 0
    assert value(after, "speckit_backend_healthy", backend="local") == 1
    assert value(after, "speckit_backend_cooldown_remaining_seconds", backend="cloud") == 0
    assert value(after, "speckit_model_verdict", model="local-model", status="pass") == 1
    assert value(after, "speckit_model_verdict", model="local-model", status="fail") == 0
    assert value(after, "speckit_capsule_query_seconds_count", query="thresholds") >= 1
    # Tracing is off here: no ids on the run's events.
    events = await CapsuleClient(svc.ctx.channel("capsule")).all_events(run_id="metrics-run")
    assert len(events) == 4 and all(e.trace_id == "" == e.span_id for e in events)


async def test_model_names_a_caller_sends_never_become_metric_labels(
    services_factory, tmp_path: Path, fixing_model, monkeypatch
):
    """/metrics has no token: a model name chosen by a caller (a credential
    pasted by mistake, or thousands of distinct names to grow the process's
    series without bound) must not show up there, whichever way the call ends."""
    monkeypatch.setenv(CLOUD_KEY_ENV, "sk-test-cloud")
    pol = write_policy(
        tmp_path,
        kind="vllm",
        endpoint=fixing_model.base_url,
        model="local-model",
        cloud_endpoint="http://127.0.0.1:9/v1",
    )
    svc = await start_stack(
        services_factory, tmp_path, pol, "local-model", metrics_addr="127.0.0.1:0"
    )
    inference = InferenceClient(svc.ctx.channel("inference"))
    names = ["ghp_ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", *(f"caller-model-{i}" for i in range(5))]
    for name in names:
        for backend in ("", "local", "cloud"):
            try:
                await inference.complete(
                    [{"role": "user", "content": "hi"}],
                    model=name,
                    backend=backend,
                    max_tokens=8,
                    timeout=30,
                )
            except grpc.aio.AioRpcError:
                pass
    labels = {
        dict(lab).get("model")
        for (metric, lab) in await scrape(svc.ctx.metrics_server.address)
        if metric.startswith("speckit_model_")
    }
    assert labels <= {"local-model", "cloud-model", "other", "none"}, labels
    assert "other" in labels  # the calls were counted, under one label


async def test_no_metrics_without_an_address(services_factory) -> None:
    svc = await services_factory(["capsule", "router"])
    assert svc.ctx.metrics is None and svc.ctx.metrics_server is None


class _Lines(logging.Handler):
    """Log lines as the service's JSON formatter writes them, at emit time."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(_JsonFormatter())
        self.lines: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


def hex_ids(s: ReadableSpan) -> tuple[str, str]:
    return format_trace_id(s.context.trace_id), format_span_id(s.context.span_id)


async def test_one_trace_spans_the_four_services(
    crate, services_factory, tmp_path: Path, fixing_model, monkeypatch, caplog
):
    monkeypatch.setenv(CLOUD_KEY_ENV, "sk-test-cloud")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    pol = write_policy(
        tmp_path,
        kind="vllm",
        endpoint=fixing_model.base_url,
        model="local-model",
        cloud_endpoint="http://127.0.0.1:9/v1",
    )
    svc = await start_stack(
        services_factory, tmp_path, pol, "local-model", tracing=Tracing(provider)
    )
    logs = _Lines()
    caplog.set_level(logging.INFO, logger="speckit.patchloop")
    logging.getLogger("speckit.patchloop").addHandler(logs)
    try:
        # An agent that does not trace: PatchLoop's server span starts the trace.
        async with aio.insecure_channel(svc.addr("patchloop")) as channel:
            _, result = await PatchLoopClient(channel).run_to_end(
                str(crate("field_typo")),
                run_id="traced-run",
                session_id="traced-session",
                timeout_s=120,
            )
    finally:
        logging.getLogger("speckit.patchloop").removeHandler(logs)
    assert result.outcome == patchloop_pb2.OUTCOME_FIXED
    events = await capsule_events(svc, "traced-run", 2)
    # Every event of the run is stored (the LLMCall and RoutingDecision too) before spans are read.
    capsule = CapsuleClient(svc.ctx.channel("capsule"))
    events = await eventually(
        lambda: capsule.all_events(run_id="traced-run"),
        lambda stored: len(stored) >= 4,
        what="the run's events (attempt, launch, decision, call) in Capsule",
    )

    spans = exporter.get_finished_spans()
    (run_rpc,) = [
        s
        for s in spans
        if s.name == "/speckit_reflex.v1.PatchLoop/Run" and s.kind == SpanKind.SERVER
    ]
    assert run_rpc.parent is None, "no caller context: the run's RPC is the root"
    trace_id, _ = hex_ids(run_rpc)
    mine = [s for s in spans if hex_ids(s)[0] == trace_id]
    names = [s.name for s in mine]
    servers = {s.attributes["rpc.service"] for s in mine if s.kind == SpanKind.SERVER}
    # Capsule's own RPC here is QueryEvents: PatchLoop reads the new session's failure history.
    assert servers == {
        "speckit_reflex.v1.PatchLoop",
        "speckit_reflex.v1.Router",
        "speckit_reflex.v1.Inference",
        "speckit_reflex.v1.Capsule",
    }
    assert names.count("patchloop.run") == 1 and names.count("patchloop.attempt") == 1
    assert names.count("patchloop.build") == 2  # failing build, then the clean one
    assert names.count("router.decide") == 1 and names.count("inference.model_call") == 1
    assert (
        names.count("capsule.store_events") >= 3
    )  # one per recording span: decision, call, loop spans
    streams = [s for s in mine if s.name == "/speckit_reflex.v1.Inference/StreamComplete"]
    assert {s.kind for s in streams} == {SpanKind.CLIENT, SpanKind.SERVER}, (
        "streaming call propagated"
    )
    decides = [s for s in mine if s.name == "/speckit_reflex.v1.Router/Decide"]
    assert {s.kind for s in decides} == {SpanKind.CLIENT, SpanKind.SERVER}, "unary call propagated"
    decide = next(s for s in mine if s.name == "router.decide")
    assert (
        decide.attributes["speckit.mode"] == "reflex"
        and decide.attributes["speckit.model"] == "local-model"
    )
    call = next(s for s in mine if s.name == "inference.model_call")
    assert (
        call.attributes["speckit.backend"] == "local"
        and call.attributes["speckit.schema_valid"] is True
    )

    # The run's events carry its trace id, and each points at the span that recorded it.
    by_type = {e.type: e for e in events}
    assert len(events) == 4 and {e.trace_id for e in events} == {trace_id}
    assert by_type[common_pb2.EVENT_TYPE_ROUTING_DECISION].span_id == hex_ids(decide)[1]
    assert by_type[common_pb2.EVENT_TYPE_LLM_CALL].span_id == hex_ids(call)[1]
    stored_under = {
        format_span_id(s.parent.span_id) for s in mine if s.name == "capsule.store_events"
    }
    assert {e.span_id for e in events} <= stored_under
    # ... and the run's log line prints it.
    (finished,) = [line for line in logs.lines if line["msg"] == "run finished"]
    assert finished["trace_id"] == trace_id and finished["run_id"] == "traced-run"
