"""Property tests (hypothesis): determinism (GR-004) and the safety rules of
routing, over random requests, policies and cache contents."""

from __future__ import annotations

from functools import cache
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from speckit_reflex.errors import DomainError
from speckit_reflex.policy import LoadedPolicy
from speckit_reflex.router.caches import CachedHealth, CachedVerdict, CloudUsage, RouterCaches
from speckit_reflex.router.core import PolicyRefusal, Router
from speckit_reflex.router.engine import Route, RoutingEngine
from speckit_reflex.router.evidence import DecisionRecorder
from speckit_reflex.v1 import common_pb2 as c
from speckit_reflex.v1 import router_pb2

from .conftest import CHAIN, NOW, make_policy

BACKENDS = ("sglang-a", "sglang-b", "vllm-c")
SERVES = {"sglang-a": {CHAIN[0]}, "sglang-b": {CHAIN[1]}, "vllm-c": {CHAIN[1], CHAIN[2]}}
HEALTH_TTL, VERDICT_TTL = 30.0, 300.0

POLICY_VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},
    "disabled": {"routing": {"reflex": {"enabled": False}}},
    "local_only": {"privacy": {"local_only": True}},
    "capped": {"budget": {"cloud_max_calls": 5, "cloud_max_tokens": 1000}},
    "no_cloud_fallback": {"routing": {"reflex": {"fallback_to_cloud": False, "max_failures": 3}}},
}


@cache
def policy(name: str) -> LoadedPolicy:
    return make_policy(POLICY_VARIANTS[name])


health_entry = st.none() | st.tuples(st.booleans(), st.floats(0, 60))
verdict_entry = st.none() | st.tuples(st.booleans(), st.floats(0, 600))

world = st.fixed_dictionaries(
    {
        "policy": st.sampled_from(sorted(POLICY_VARIANTS)),
        "health": st.fixed_dictionaries({b: health_entry for b in BACKENDS}),
        "verdicts": st.fixed_dictionaries({m: verdict_entry for m in CHAIN}),
        "usage": st.none() | st.tuples(st.integers(0, 10), st.integers(0, 2000)),
    }
)

requests = st.builds(
    router_pb2.DecideRequest,
    stage=st.sampled_from([v for v in c.Stage.values() if v]),
    role=st.sampled_from([v for v in c.Role.values() if v]),
    session_id=st.text(max_size=8),
    attempt=st.integers(1, 10),
    consecutive_failures=st.integers(0, 5),
    context_estimate=st.integers(0, 300_000),
    confidence=st.none() | st.floats(0, 1),
    contradictions_detected=st.booleans(),
    tool_heavy=st.booleans(),
    full_sweep=st.booleans(),
    user_requested_escalation=st.booleans(),
    local_only=st.booleans(),
    force_mode=st.sampled_from([0, c.ROUTING_MODE_REFLEX, c.ROUTING_MODE_CLOUD]),
)


def caches_for(w: dict[str, Any]) -> RouterCaches:
    caches = RouterCaches()
    caches.set_health(
        CachedHealth(b, ok, NOW - age)
        for b, entry in w["health"].items()
        if entry
        for ok, age in [entry]
    )
    for model, entry in w["verdicts"].items():
        if entry:
            caches.set_verdict(CachedVerdict(model, entry[0], NOW - entry[1]))
    if w["usage"]:
        caches.set_usage(CloudUsage(w["usage"][0], w["usage"][1], NOW - 1))
    return caches


def outcome(engine: RoutingEngine, req: router_pb2.DecideRequest) -> Route | tuple[str, str]:
    try:
        return engine.decide(req)
    except DomainError as exc:
        return (type(exc).__name__, exc.message)


@settings(max_examples=400, deadline=None)
@given(w=world, req=requests)
def test_same_inputs_same_decision(w: dict[str, Any], req: router_pb2.DecideRequest) -> None:
    """GR-004: independently built engines over equal inputs agree, every time."""
    loaded = policy(w["policy"])
    first = RoutingEngine(loaded, caches_for(w), clock=lambda: NOW)
    second = RoutingEngine(loaded, caches_for(w), clock=lambda: NOW)
    copy = router_pb2.DecideRequest.FromString(req.SerializeToString())
    assert outcome(first, req) == outcome(second, copy) == outcome(first, req)


@settings(max_examples=150, deadline=None)
@given(w=world, req=requests)
def test_recorded_decisions_differ_only_in_id_and_latency(
    w: dict[str, Any], req: router_pb2.DecideRequest
) -> None:
    loaded = policy(w["policy"])
    answers = []
    for _ in range(2):
        events: list[c.Event] = []
        router = Router(
            RoutingEngine(loaded, caches_for(w), clock=lambda: NOW),
            DecisionRecorder(events.append),
            loaded,
        )
        try:
            decision = router.decide(req)
        except PolicyRefusal as exc:
            decision = exc.decision
        except DomainError:
            return
        for ev in events:
            ev.ClearField("id")
            ev.ClearField("time")
            ev.ClearField("latency_ms")
            if "decision_id" in ev.payload:
                del ev.payload["decision_id"]
        answers.append(
            (
                decision.route,
                decision.policy_hash,
                [e.SerializeToString(deterministic=True) for e in events],
            )
        )
    assert answers[0] == answers[1]


def _fresh_healthy(w: dict[str, Any], model: str, backend: str) -> bool:
    entry = w["health"][backend]
    return model in SERVES[backend] and entry is not None and entry[0] and entry[1] <= HEALTH_TTL


@settings(max_examples=400, deadline=None)
@given(w=world, req=requests)
def test_safety_rules_hold(w: dict[str, Any], req: router_pb2.DecideRequest) -> None:
    loaded = policy(w["policy"])
    route = outcome(RoutingEngine(loaded, caches_for(w), clock=lambda: NOW), req)
    if not isinstance(route, Route):
        return
    p = loaded.policy
    if route.mode == c.ROUTING_MODE_REFLEX:
        assert req.role == c.ROLE_IMPLEMENTER and req.stage == c.STAGE_IMPLEMENT
        if not route.refused:
            # Never reflex on an unhealthy or unknown backend.
            assert _fresh_healthy(w, route.model, route.backend)
        if not route.forced:
            # Never reflex without the model's own fresh, passing verdict.
            verdict = w["verdicts"][route.model]
            assert verdict is not None and verdict[0] and verdict[1] <= VERDICT_TTL
            assert req.consecutive_failures < p.routing.reflex.max_failures
    if route.mode == c.ROUTING_MODE_CLOUD and not route.refused:
        # GR-009: no cloud route under local_only; GR-011: none over the cap.
        assert not (p.privacy.local_only or req.local_only)
        if p.budget.cloud_max_calls:
            assert w["usage"] is not None and w["usage"][0] < p.budget.cloud_max_calls
            assert w["usage"][1] < p.budget.cloud_max_tokens
    if route.is_fallback and route.mode == c.ROUTING_MODE_REFLEX:
        assert route.skipped and route.model != route.skipped[0].model
