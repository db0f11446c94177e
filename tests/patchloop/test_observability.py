"""Metrics and traces of a real PatchLoop run across the four services.

Metrics are scraped over HTTP from the process's /metrics endpoint before and
after a run; the model server is the vLLM-shaped fake (tests/inference/fakes.py)
answering the fixing patch, so the run is fixed by reflex on attempt 1.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import grpc
import httpx
import pytest
from patchloop_support import FIXED_LINE
from prometheus_client.parser import text_string_to_metric_families
from test_patchloop_e2e import CLOUD_KEY_ENV, start_stack, write_policy

from speckit_reflex.clients.patchloop import PatchLoopClient
from speckit_reflex.v1 import patchloop_pb2
from tests.inference.fakes import FakeModelServer

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
    server = await FakeModelServer(kind="vllm", models=["local-model"], reply=json.dumps(FIXED_LINE)).start()
    yield server
    await server.stop()


async def test_metrics_move_after_a_real_run(crate, services_factory, tmp_path: Path, fixing_model, monkeypatch):
    monkeypatch.setenv(CLOUD_KEY_ENV, "sk-test-cloud")
    pol = write_policy(tmp_path, kind="vllm", endpoint=fixing_model.base_url, model="local-model",
                       cloud_endpoint="http://127.0.0.1:9/v1")
    svc = await start_stack(services_factory, tmp_path, pol, "local-model", metrics_addr="127.0.0.1:0")
    address = svc.ctx.metrics_server.address
    before = await scrape(address)

    client = PatchLoopClient(svc.ctx.channel("patchloop"))
    _, result = await client.run_to_end(str(crate("field_typo")), run_id="metrics-run", timeout_s=120)
    assert result.outcome == patchloop_pb2.OUTCOME_FIXED and result.fixed_by == patchloop_pb2.FIX_SOURCE_REFLEX
    with pytest.raises(grpc.aio.AioRpcError):
        await client.get_run("no-such-run")

    # Events reach Capsule in the background: wait until every sink delivered
    # the run's (a sink counts an event sent once Capsule stored it).
    deadline = time.monotonic() + 15
    while True:
        after = await scrape(address)
        delivered = moved(before, after, "speckit_event_sink_sent_total", service="patchloop") == 2 and not any(
            value(after, "speckit_event_sink_backlog", service=s) for s in ("router", "inference", "patchloop"))
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
    assert moved(before, after, "speckit_rpc_server_handling_seconds_count", service="patchloop", method="Run") == 1
    assert moved(before, after, "speckit_routing_decisions_total", mode="reflex",
                 reason="healthy_and_thresholds_met", model="local-model") == 1
    call = {"backend": "local", "model": "local-model"}
    assert moved(before, after, "speckit_model_calls_total", **call, outcome="ok", schema_valid="true") == 1
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


async def test_no_metrics_without_an_address(services_factory) -> None:
    svc = await services_factory(["capsule", "router"])
    assert svc.ctx.metrics is None and svc.ctx.metrics_server is None
