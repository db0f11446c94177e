"""The Router over real gRPC, against controllable Inference and Capsule
servicers on their own real servers (tests/router/conftest.py)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import grpc
import pytest

from speckit_reflex.clients.errors import error_of
from speckit_reflex.clients.router import RouterClient, refusal_reason
from speckit_reflex.v1 import common_pb2 as c
from tests.waiting import eventually

from .conftest import BACKUP, LAST, PRIMARY, Peers, make_policy


async def start_router(services_factory, peers: Peers, policy_over: dict[str, Any] | None = None):  # type: ignore[no-untyped-def]
    svc = await services_factory(
        ["router"],
        policy=make_policy(policy_over),
        inference_addr=peers.inference_addr,
        capsule_addr=peers.capsule_addr,
    )
    return svc, RouterClient(svc.ctx.channel("router")), svc.servers["router"].service


IMPLEMENT = {"stage": c.STAGE_IMPLEMENT, "role": c.ROLE_IMPLEMENTER}


async def test_decide_over_grpc_routes_reflex_and_records_the_event(
    peers: Peers, services_factory
) -> None:
    _svc, client, service = await start_router(services_factory, peers)
    d = await client.decide(**IMPLEMENT, session_id="sess-1", run_id="run-1", attempt=1)
    assert (d.mode, d.reason, d.model, d.backend) == (
        c.ROUTING_MODE_REFLEX,
        c.ROUTING_REASON_HEALTHY_AND_THRESHOLDS_MET,
        PRIMARY,
        "sglang-a",
    )
    assert d.endpoint == "http://127.0.0.1:3009/v1" and not d.is_fallback
    assert (
        d.policy_hash == service.router.policy.sha256
        and d.session_id == "sess-1"
        and d.attempt == 1
    )
    # Verdicts are asked per chain model, with the policy's window and sample floor.
    assert sorted(r.model for r in peers.capsule.threshold_requests) == sorted(
        [PRIMARY, BACKUP, LAST]
    )
    assert {(r.window.since, r.min_samples) for r in peers.capsule.threshold_requests} == {
        ("24h", 20)
    }
    assert await service.events.flush(5.0)
    (ev,) = peers.events(c.EVENT_TYPE_ROUTING_DECISION)
    assert ev.id == d.decision_id
    assert (ev.role, ev.stage, ev.mode, ev.model, ev.backend) == (
        c.ROLE_IMPLEMENTER,
        c.STAGE_IMPLEMENT,
        c.ROUTING_MODE_REFLEX,
        PRIMARY,
        "sglang-a",
    )
    assert (ev.reason, ev.is_fallback, ev.session_id, ev.run_id, ev.attempt) == (
        "healthy_and_thresholds_met",
        False,
        "sess-1",
        "run-1",
        1,
    )
    assert ev.policy_hash == d.policy_hash and ev.latency_ms == pytest.approx(d.latency_ms)
    assert peers.events(c.EVENT_TYPE_AUDIT) == []


async def test_backend_stopped_then_next_model_then_cloud(peers: Peers, services_factory) -> None:
    _, client, service = await start_router(services_factory, peers)
    assert (await client.decide(**IMPLEMENT)).model == PRIMARY

    peers.inference.healthy["sglang-a"] = False
    await service.refresher.refresh_health()
    d = await client.decide(**IMPLEMENT)
    assert (d.mode, d.model, d.backend, d.is_fallback) == (
        c.ROUTING_MODE_REFLEX,
        BACKUP,
        "sglang-b",
        True,
    )
    assert [(s.model, s.reason) for s in d.skipped] == [
        (PRIMARY, c.ROUTING_REASON_SERVER_UNHEALTHY)
    ]
    assert "connection refused" in d.skipped[0].detail

    peers.inference.healthy.update({"sglang-b": False, "vllm-c": False})
    await service.refresher.refresh_health()
    d = await client.decide(**IMPLEMENT)
    assert (d.mode, d.reason, d.backend, d.is_fallback) == (
        c.ROUTING_MODE_CLOUD,
        c.ROUTING_REASON_SERVER_UNHEALTHY,
        "cloud",
        True,
    )
    assert len(d.skipped) == 3

    assert await service.events.flush(5.0)
    reasons = [e.reason for e in peers.events(c.EVENT_TYPE_ROUTING_DECISION)]
    assert reasons == [
        "healthy_and_thresholds_met",
        "healthy_and_thresholds_met",
        "server_unhealthy",
    ]
    # Both degradations are audited (GR-005).
    assert len(peers.events(c.EVENT_TYPE_AUDIT)) == 2


async def test_bakeoff_failing_gives_thresholds_not_met(peers: Peers, services_factory) -> None:
    _, client, service = await start_router(services_factory, peers)
    peers.capsule.passed = dict.fromkeys((PRIMARY, BACKUP, LAST), False)
    await service.refresher.refresh_verdicts()
    d = await client.decide(**IMPLEMENT)
    assert (d.mode, d.reason) == (c.ROUTING_MODE_CLOUD, c.ROUTING_REASON_THRESHOLDS_NOT_MET)
    assert "success parity 60.0% < 85.0%" in d.detail


async def test_background_refresh_notices_a_stopped_backend(peers: Peers, services_factory) -> None:
    _, client, _ = await start_router(
        services_factory, peers, {"routing": {"health": {"probe_interval_s": 0.1}}}
    )
    assert (await client.decide(**IMPLEMENT)).model == PRIMARY
    peers.inference.healthy["sglang-a"] = False
    # No manual refresh: the background task (every 0.1 s) must pick it up.
    d = await eventually(
        lambda: client.decide(**IMPLEMENT),
        lambda d: d.model != PRIMARY,
        what="the background refresh seeing sglang-a stopped",
        interval_s=0.05,
    )
    assert d.model == BACKUP


async def test_unreachable_inference_degrades_to_status_unknown(
    peers: Peers, services_factory
) -> None:
    _, client, service = await start_router(
        services_factory,
        peers,
        {"routing": {"health": {"probe_interval_s": 0.1, "stale_after_s": 0.3}}},
    )
    assert (await client.decide(**IMPLEMENT)).mode == c.ROUTING_MODE_REFLEX
    await peers.stop_inference()  # its port stays held: refused, never another server's
    await service.refresher.refresh_health()
    # Refreshes (every 0.1 s) now fail; the last good answer ages past stale_after_s
    # (0.3 s), and until then it still routes reflex.
    d = await eventually(
        lambda: client.decide(**IMPLEMENT),
        lambda d: d.mode != c.ROUTING_MODE_REFLEX,
        what="the last health answer gone stale",
    )
    assert (d.mode, d.reason) == (c.ROUTING_MODE_CLOUD, c.ROUTING_REASON_STATUS_UNKNOWN)
    assert "last health refresh failed: UNAVAILABLE" in d.detail


async def test_unreachable_capsule_at_start_never_routes_reflex(
    peers: Peers, services_factory, dead_endpoint
) -> None:
    svc = await services_factory(
        ["router"],
        policy=make_policy(),
        inference_addr=peers.inference_addr,
        capsule_addr=dead_endpoint().addr,
    )
    d = await RouterClient(svc.ctx.channel("router")).decide(**IMPLEMENT)
    assert (d.mode, d.reason) == (c.ROUTING_MODE_CLOUD, c.ROUTING_REASON_STATUS_UNKNOWN)
    assert "no bakeoff verdict yet (last verdict refresh failed: UNAVAILABLE" in d.detail


async def test_local_only_refusal_is_failed_precondition_and_recorded(
    peers: Peers, services_factory
) -> None:
    _, client, service = await start_router(services_factory, peers)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.decide(
            stage=c.STAGE_PLAN, role=c.ROLE_IMPLEMENTER, local_only=True, session_id="s-lo"
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.details().startswith("local_only_forbids_cloud: request local_only = true")
    assert refusal_reason(info.value) == "local_only_forbids_cloud"
    # The refusal as data: ErrorInfo ROUTE_REFUSED of our domain, with why
    # and the id of the decision recorded for it.
    err = error_of(info.value)
    assert (err.reason, err.reason_text) == (c.ERROR_REASON_ROUTE_REFUSED, "ROUTE_REFUSED")
    assert err.metadata["routing_reason"] == "local_only_forbids_cloud"
    assert await service.events.flush(5.0)
    (ev,) = peers.events(c.EVENT_TYPE_ROUTING_DECISION)
    assert err.metadata == {"routing_reason": "local_only_forbids_cloud", "decision_id": ev.id}
    assert (ev.reason, ev.mode, ev.session_id) == (
        "local_only_forbids_cloud",
        c.ROUTING_MODE_UNSPECIFIED,
        "s-lo",
    )
    assert ev.payload["would_route"] == "cloud" and ev.payload["cause"] == "stage_not_implement"
    (audit,) = peers.events(c.EVENT_TYPE_AUDIT)
    assert audit.payload["decision_id"] == ev.id


async def test_budget_cap_from_capsule_usage(peers: Peers, services_factory) -> None:
    peers.capsule.usage.calls = 10
    _, client, service = await start_router(
        services_factory, peers, {"budget": {"cloud_max_calls": 10}}
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.decide(stage=c.STAGE_VALIDATE, role=c.ROLE_IMPLEMENTER)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert refusal_reason(info.value) == "budget_exhausted"
    assert "10 cloud calls in the last 24h" in info.value.details()
    # Usage drops (the window moved on): after the next refresh cloud is allowed again.
    peers.capsule.usage.calls = 3
    await service.refresher.refresh_usage()
    d = await client.decide(stage=c.STAGE_VALIDATE, role=c.ROLE_IMPLEMENTER)
    assert (d.mode, d.reason) == (c.ROUTING_MODE_CLOUD, c.ROUTING_REASON_STAGE_NOT_IMPLEMENT)


async def test_escalation_for_other_roles_over_grpc(peers: Peers, services_factory) -> None:
    _, client, _ = await start_router(services_factory, peers)
    d = await client.decide(stage=c.STAGE_SPECIFY, role=c.ROLE_LIBRARIAN, context_estimate=120_000)
    assert (d.mode, d.reason, d.model) == (
        c.ROUTING_MODE_CLOUD,
        c.ROUTING_REASON_ESCALATION_PREDICATE,
        "kimi-k2-instruct-0905",
    )
    d = await client.decide(stage=c.STAGE_PLAN, role=c.ROLE_ARCHITECT, confidence=0.8)
    assert (d.mode, d.reason) == (c.ROUTING_MODE_LOCAL, c.ROUTING_REASON_LOCAL_DEFAULT)


async def test_get_policy_returns_snapshot_and_hash(peers: Peers, services_factory) -> None:
    _, client, _ = await start_router(services_factory, peers)
    snap = await client.get_policy()
    assert snap.sha256 == hashlib.sha256(snap.json.encode()).hexdigest()
    assert snap.sha256 == make_policy().sha256 and snap.source == "<test>"
    routing = json.loads(snap.json)["governance"]["routing"]
    assert routing["reflex"]["model_primary"] == PRIMARY
    assert routing["reflex"]["model_fallbacks"] == [BACKUP, LAST]


async def test_malformed_request_is_invalid_argument(peers: Peers, services_factory) -> None:
    _, client, _ = await start_router(services_factory, peers)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.decide(stage=c.STAGE_IMPLEMENT, role=c.ROLE_UNSPECIFIED)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refusal_reason(info.value) is None
    err = error_of(info.value)
    assert (err.reason, err.metadata) == (c.ERROR_REASON_INVALID_FIELD, {"field": "role"})
    # The server keeps serving.
    assert (await client.decide(**IMPLEMENT)).mode == c.ROUTING_MODE_REFLEX
