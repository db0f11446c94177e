"""A model pinned by the request (the OpenAI endpoint's concrete model ids)
and a waived bakeoff verdict (`routing.reflex.require_verdict = false`, what
`speckit serve --mode reflex` sets): what the Router decides, refuses and
records for each."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from speckit_reflex.errors import InvalidArgument
from speckit_reflex.router.core import PolicyRefusal
from speckit_reflex.router.engine import reason_name
from speckit_reflex.v1 import common_pb2 as c

from .conftest import BACKUP, LAST, PRIMARY
from .test_decision_flow import ALL_DOWN, CAP_CALLS, build_router, request

WAIVE = {"routing": {"reflex": {"require_verdict": False}}}
NOT_PROVEN = {"verdicts": {PRIMARY: False, BACKUP: False, LAST: None}}


def events_of(events: list[c.Event], kind: int) -> list[c.Event]:
    return [e for e in events if e.type == kind]


def test_a_waived_verdict_routes_to_the_unproven_primary_flagged_and_audited() -> None:
    router, events = build_router(WAIVE, NOT_PROVEN)
    route = router.decide(request()).route
    assert (route.mode, route.model, route.backend) == (c.ROUTING_MODE_REFLEX, PRIMARY, "sglang-a")
    assert route.verdict_waived and reason_name(route.reason) == "thresholds_not_met"
    assert "WAIVED" in route.detail and "p95 latency 2400 ms" in route.detail
    (ev,) = events_of(events, c.EVENT_TYPE_ROUTING_DECISION)
    assert ev.payload["verdict_waived"] is True and ev.reason == "thresholds_not_met"
    (audit,) = events_of(events, c.EVENT_TYPE_AUDIT)
    assert audit.payload["kind"] == "verdict_waived"


def test_the_same_unproven_model_goes_to_cloud_when_the_verdict_is_required() -> None:
    router, events = build_router({}, NOT_PROVEN)
    route = router.decide(request()).route
    assert route.mode == c.ROUTING_MODE_CLOUD and not route.verdict_waived
    assert "verdict_waived" not in events_of(events, c.EVENT_TYPE_ROUTING_DECISION)[0].payload


@pytest.mark.parametrize(
    ("caches", "req", "mode", "model"),
    [
        # Health is still required: the next healthy model of the chain...
        ({"health": {"sglang-a": False}} | NOT_PROVEN, {}, c.ROUTING_MODE_REFLEX, BACKUP),
        # ...and with none, cloud as usual.
        (ALL_DOWN | NOT_PROVEN, {}, c.ROUTING_MODE_CLOUD, "deepseek-chat"),
        # Escalation after max_failures is not waived.
        (NOT_PROVEN, {"consecutive_failures": 2}, c.ROUTING_MODE_CLOUD, "deepseek-chat"),
    ],
    ids=["next_healthy_model", "all_down_to_cloud", "max_failures_escalates"],
)
def test_a_waived_verdict_keeps_health_and_escalation(
    caches: dict[str, Any], req: dict[str, Any], mode: int, model: str
) -> None:
    router, _ = build_router(WAIVE, caches)
    route = router.decide(request(**req)).route
    assert (route.mode, route.model) == (mode, model)


def test_a_pinned_reflex_model_is_routed_without_its_verdict() -> None:
    router, events = build_router({}, NOT_PROVEN)
    route = router.decide(request(model=BACKUP)).route
    assert (route.mode, route.model, route.backend, route.forced) == (
        c.ROUTING_MODE_REFLEX,
        BACKUP,
        "sglang-b",
        True,
    )
    assert (
        "pinned by the request" in route.detail
        and reason_name(route.reason) == "thresholds_not_met"
    )
    (ev,) = events_of(events, c.EVENT_TYPE_ROUTING_DECISION)
    assert ev.model == BACKUP and ev.payload["forced"] is True


def test_a_pinned_reflex_model_with_no_healthy_backend_is_refused_not_rerouted() -> None:
    router, events = build_router({}, {"health": {"sglang-b": False, "vllm-c": False}})
    with pytest.raises(PolicyRefusal) as info:
        router.decide(request(model=BACKUP))
    assert info.value.message.startswith(
        "server_unhealthy: pinned model qwen3-coder-30b-a3b has no healthy backend"
    )
    assert events_of(events, c.EVENT_TYPE_ROUTING_DECISION)[0].payload["refused"] is True


@pytest.mark.parametrize(
    ("policy", "caches", "req", "refused"),
    [
        ({}, {}, {}, ""),
        ({"privacy": {"local_only": True}}, {}, {}, "local_only_forbids_cloud"),
        ({}, {}, {"local_only": True}, "local_only_forbids_cloud"),
        (CAP_CALLS, {"usage": (10, 0)}, {}, "budget_exhausted"),
    ],
    ids=["allowed", "policy_local_only", "request_local_only", "budget"],
)
def test_a_pinned_cloud_model_passes_the_cloud_guards(
    policy: dict[str, Any], caches: dict[str, Any], req: dict[str, Any], refused: str
) -> None:
    router, _ = build_router(policy, caches)
    if refused:
        with pytest.raises(PolicyRefusal) as info:
            router.decide(request(model="deepseek-chat", **req))
        assert info.value.message.startswith(f"{refused}: ")
        return
    route = router.decide(request(model="deepseek-chat")).route
    assert (route.mode, route.model, route.backend, route.forced) == (
        c.ROUTING_MODE_CLOUD,
        "deepseek-chat",
        "cloud",
        True,
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"model": "gpt-4o"}, "model: 'gpt-4o' is not a model of the policy (known: gpt-oss-20b, "),
        ({"model": "x" * 257}, "model: longer than 256 characters"),
        (
            {"model": PRIMARY, "force_mode": c.ROUTING_MODE_REFLEX},
            "model: a pinned model and force_mode",
        ),
        (
            {"model": PRIMARY, "role": c.ROLE_ARCHITECT},
            "model: pinning a model applies only to ROLE_IMPLEMENTER",
        ),
        ({"model": PRIMARY, "stage": c.STAGE_PLAN}, "reflex applies only to STAGE_IMPLEMENT"),
    ],
)
def test_malformed_pins_are_invalid_argument(fields: dict[str, Any], message: str) -> None:
    router, events = build_router({}, {})
    with pytest.raises(InvalidArgument) as info:
        router.decide(request(**fields))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and message in info.value.message
    assert events == []
