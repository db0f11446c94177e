"""The Router with the real Capsule (SQLite and PostgreSQL): per-model bakeoff
verdicts come from recorded bakeoff trials, cloud usage from stored events, and the RoutingDecision
events of a run are queryable with the right fields."""

from __future__ import annotations

import grpc
import pytest

from speckit_reflex.capsule import migrate
from speckit_reflex.clients.capsule import CapsuleClient
from speckit_reflex.clients.router import RouterClient, refusal_reason
from speckit_reflex.runtime.events import new_event
from speckit_reflex.v1 import common_pb2 as c
from tests.verdict_evidence import record_bakeoff

from .conftest import BACKUP, LAST, PRIMARY, Peers, make_policy

POLICY = {"routing": {"verdicts": {"min_samples": 3}}, "budget": {"cloud_max_calls": 2}}


def patch_attempt(mode: int, model: str, latency_ms: float, success: bool = True) -> c.Event:
    return new_event(
        c.EVENT_TYPE_PATCH_ATTEMPT,
        role=c.ROLE_IMPLEMENTER,
        mode=mode,
        model=model,
        latency_ms=latency_ms,
        success=success,
        json_valid=True,
    )


async def test_routing_decisions_are_queryable_in_capsule(
    peers: Peers, services_factory, db_url: str
) -> None:
    migrate.upgrade_url(db_url)
    svc = await services_factory(
        ["capsule", "router"],
        database_url=db_url,
        policy=make_policy(POLICY),
        inference_addr=peers.inference_addr,
    )
    capsule = CapsuleClient(svc.ctx.channel("capsule"))
    router = RouterClient(svc.ctx.channel("router"))
    service = svc.servers["router"].service

    # Bakeoff evidence: the primary holds the thresholds on 4 tasks; the
    # backup ran one slow task (too few samples). Production attempts are
    # live statistics and never make a verdict.
    await record_bakeoff(capsule, PRIMARY, 4)
    await record_bakeoff(capsule, BACKUP, 1, latency_ms=4000)
    await capsule.append_events(
        [patch_attempt(c.ROUTING_MODE_REFLEX, LAST, 300) for _ in range(10)]
    )
    await service.refresher.refresh_verdicts()

    session = "sess-capsule"
    first = await router.decide(
        stage=c.STAGE_IMPLEMENT,
        role=c.ROLE_IMPLEMENTER,
        session_id=session,
        run_id="run-7",
        attempt=1,
    )
    assert (first.mode, first.model, first.backend) == (c.ROUTING_MODE_REFLEX, PRIMARY, "sglang-a")

    # The primary's server stops: the backup and last resort have not passed
    # their own bakeoff, so the attempt goes to cloud with the primary's reason.
    peers.inference.healthy["sglang-a"] = False
    await service.refresher.refresh_health()
    second = await router.decide(
        stage=c.STAGE_IMPLEMENT,
        role=c.ROLE_IMPLEMENTER,
        session_id=session,
        run_id="run-7",
        attempt=2,
        consecutive_failures=1,
    )
    assert (second.mode, second.reason) == (c.ROUTING_MODE_CLOUD, c.ROUTING_REASON_SERVER_UNHEALTHY)
    assert [(s.model, s.reason) for s in second.skipped] == [
        (PRIMARY, c.ROUTING_REASON_SERVER_UNHEALTHY),
        (BACKUP, c.ROUTING_REASON_THRESHOLDS_NOT_MET),
        (LAST, c.ROUTING_REASON_THRESHOLDS_NOT_MET),
    ]
    assert "1 task(s) judged, at least 3 required" in second.skipped[1].detail
    assert "0 task(s) judged" in second.skipped[2].detail

    # Two cloud calls are recorded: the budget (2 calls) is used up.
    await capsule.append_events(
        [
            new_event(
                c.EVENT_TYPE_LLM_CALL,
                mode=c.ROUTING_MODE_CLOUD,
                model="deepseek-chat",
                prompt_tokens=100,
                completion_tokens=20,
                latency_ms=900.0,
            )
            for _ in range(2)
        ]
    )
    await service.refresher.refresh_usage()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await router.decide(
            stage=c.STAGE_IMPLEMENT,
            role=c.ROLE_IMPLEMENTER,
            session_id=session,
            run_id="run-7",
            attempt=3,
            consecutive_failures=2,
        )
    assert refusal_reason(info.value) == "budget_exhausted"
    assert "2 cloud calls in the last 24h >= budget.cloud_max_calls = 2" in info.value.details()

    assert await service.events.flush(5.0)
    events = await capsule.all_events(type=c.EVENT_TYPE_ROUTING_DECISION, session_id=session)
    by_attempt = {e.attempt: e for e in events}
    assert sorted(by_attempt) == [1, 2, 3]
    policy_hash = service.router.policy.sha256

    e1, e2, e3 = by_attempt[1], by_attempt[2], by_attempt[3]
    assert e1.id == first.decision_id and e2.id == second.decision_id
    assert (e1.role, e1.stage, e1.mode, e1.model, e1.backend, e1.reason, e1.is_fallback) == (
        c.ROLE_IMPLEMENTER,
        c.STAGE_IMPLEMENT,
        c.ROUTING_MODE_REFLEX,
        PRIMARY,
        "sglang-a",
        "healthy_and_thresholds_met",
        False,
    )
    assert (e2.mode, e2.model, e2.backend, e2.reason, e2.is_fallback) == (
        c.ROUTING_MODE_CLOUD,
        "deepseek-chat",
        "cloud",
        "server_unhealthy",
        True,
    )
    assert [s["reason"] for s in e2.payload["skipped"]] == [
        "server_unhealthy",
        "thresholds_not_met",
        "thresholds_not_met",
    ]
    assert (e3.mode, e3.reason, e3.payload["cause"]) == (
        c.ROUTING_MODE_UNSPECIFIED,
        "budget_exhausted",
        "max_failures_reached",
    )
    for e, answer in ((e1, first), (e2, second)):
        assert e.latency_ms == pytest.approx(answer.latency_ms)
    for e in events:
        assert (e.policy_hash, e.session_id, e.run_id) == (policy_hash, session, "run-7")
        assert e.latency_ms >= 0 and e.time.seconds > 0

    # The two degradations are audited in Capsule too (GR-005).
    audits = await capsule.all_events(type=c.EVENT_TYPE_AUDIT, session_id=session)
    assert sorted(a.payload["decision_id"] for a in audits) == sorted([e2.id, e3.id])
