"""Every branch of the Router's decision flow and every reason, table-driven.

Each row: a policy (BASE_POLICY plus overrides), cached health/verdicts/usage,
a request, and the expected decision or refusal. The Router core runs with
in-memory caches at a fixed clock; the events it emits are checked too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from speckit_reflex.errors import InvalidArgument
from speckit_reflex.router.caches import RouterCaches
from speckit_reflex.router.core import PolicyRefusal, Router
from speckit_reflex.router.engine import RoutingEngine, reason_name
from speckit_reflex.router.evidence import DecisionRecorder
from speckit_reflex.v1 import common_pb2 as c
from speckit_reflex.v1 import router_pb2

from .conftest import BACKUP, LAST, NOW, PRIMARY, fill_caches, make_policy

REFLEX, CLOUD, LOCAL = c.ROUTING_MODE_REFLEX, c.ROUTING_MODE_CLOUD, c.ROUTING_MODE_LOCAL
ARCH, LIB, JUDGE, TUTOR = c.ROLE_ARCHITECT, c.ROLE_LIBRARIAN, c.ROLE_JUDGE, c.ROLE_TUTOR


@dataclass
class Case:
    id: str
    request: dict[str, Any] = field(default_factory=dict)
    policy: dict[str, Any] = field(default_factory=dict)
    caches: dict[str, Any] = field(default_factory=dict)
    # Expected decision (when not refused):
    mode: int = 0
    reason: str = ""
    model: str = ""
    backend: str = ""
    is_fallback: bool = False
    skipped: list[tuple[str, str]] = field(default_factory=list)
    forced: bool = False
    detail_has: str = ""
    # Expected refusal: its routing reason (ErrorInfo metadata routing_reason).
    refused: str = ""


ALL_DOWN = {"health": {"sglang-a": False, "sglang-b": False, "vllm-c": False}}
CAP_CALLS = {"budget": {"cloud_max_calls": 10}}
CAP_TOKENS = {"budget": {"cloud_max_tokens": 50_000}}

CASES = [
    # -- SPEC-KIT-978 flow, in order --
    Case(
        "stage_not_implement",
        {"stage": c.STAGE_PLAN},
        mode=CLOUD,
        reason="stage_not_implement",
        model="deepseek-chat",
        backend="cloud",
        detail_has="STAGE_PLAN",
    ),
    Case(
        "reflex_disabled",
        policy={"routing": {"reflex": {"enabled": False}}},
        mode=CLOUD,
        reason="reflex_disabled",
        model="deepseek-chat",
        backend="cloud",
    ),
    Case(
        "max_failures_reached",
        {"consecutive_failures": 2},
        mode=CLOUD,
        reason="max_failures_reached",
        is_fallback=True,
        detail_has="2 consecutive failed attempts >= routing.reflex.max_failures = 2",
    ),
    Case(
        "below_max_failures_stays_reflex",
        {"consecutive_failures": 1},
        mode=REFLEX,
        reason="healthy_and_thresholds_met",
        model=PRIMARY,
        backend="sglang-a",
    ),
    Case(
        "healthy_and_thresholds_met",
        mode=REFLEX,
        reason="healthy_and_thresholds_met",
        model=PRIMARY,
        backend="sglang-a",
    ),
    # -- the gated chain --
    Case(
        "primary_unhealthy_next_model",
        caches={"health": {"sglang-a": False}},
        mode=REFLEX,
        reason="healthy_and_thresholds_met",
        model=BACKUP,
        backend="sglang-b",
        is_fallback=True,
        skipped=[(PRIMARY, "server_unhealthy")],
    ),
    Case(
        "primary_thresholds_not_met_next_model",
        caches={"verdicts": {PRIMARY: False}},
        mode=REFLEX,
        reason="healthy_and_thresholds_met",
        model=BACKUP,
        backend="sglang-b",
        is_fallback=True,
        skipped=[(PRIMARY, "thresholds_not_met")],
    ),
    # New weights behind the primary's name: its passing verdict was formed on the old ones.
    Case(
        "primary_model_identity_changed_next_model",
        caches={
            "identities": {"sglang-a": "sglang:/w/gpt-oss-20b-v2"},
            "verdict_identities": {PRIMARY: "sglang:/w/gpt-oss-20b-v1"},
        },
        mode=REFLEX,
        reason="healthy_and_thresholds_met",
        model=BACKUP,
        backend="sglang-b",
        is_fallback=True,
        skipped=[(PRIMARY, "thresholds_not_met")],
    ),
    Case(
        "same_identity_keeps_the_verdict",
        caches={
            "identities": {"sglang-a": "sglang:/w/gpt-oss-20b-v1"},
            "verdict_identities": {PRIMARY: "sglang:/w/gpt-oss-20b-v1"},
        },
        mode=REFLEX,
        reason="healthy_and_thresholds_met",
        model=PRIMARY,
        backend="sglang-a",
    ),
    Case(
        "primary_health_stale_next_model",
        caches={"health_age": {"sglang-a": 31.0}},
        mode=REFLEX,
        reason="healthy_and_thresholds_met",
        model=BACKUP,
        is_fallback=True,
        skipped=[(PRIMARY, "status_unknown")],
    ),
    Case(
        "primary_verdict_stale_next_model",
        caches={"verdict_age": {PRIMARY: 301.0}},
        mode=REFLEX,
        reason="healthy_and_thresholds_met",
        model=BACKUP,
        is_fallback=True,
        skipped=[(PRIMARY, "status_unknown")],
    ),
    Case(
        "primary_verdict_missing_next_model",
        caches={"verdicts": {PRIMARY: None}},
        mode=REFLEX,
        reason="healthy_and_thresholds_met",
        model=BACKUP,
        is_fallback=True,
        skipped=[(PRIMARY, "status_unknown")],
    ),
    Case(
        "backup_on_second_backend",
        caches={"health": {"sglang-a": False, "sglang-b": False}},
        mode=REFLEX,
        reason="healthy_and_thresholds_met",
        model=BACKUP,
        backend="vllm-c",
        is_fallback=True,
        skipped=[(PRIMARY, "server_unhealthy")],
    ),
    Case(
        "last_resort",
        caches={"health": {"sglang-a": False}, "verdicts": {BACKUP: False}},
        mode=REFLEX,
        reason="healthy_and_thresholds_met",
        model=LAST,
        backend="vllm-c",
        is_fallback=True,
        skipped=[(PRIMARY, "server_unhealthy"), (BACKUP, "thresholds_not_met")],
    ),
    Case(
        "all_unhealthy_cloud_server_unhealthy",
        caches=ALL_DOWN,
        mode=CLOUD,
        reason="server_unhealthy",
        model="deepseek-chat",
        is_fallback=True,
        skipped=[
            (PRIMARY, "server_unhealthy"),
            (BACKUP, "server_unhealthy"),
            (LAST, "server_unhealthy"),
        ],
    ),
    Case(
        "all_failing_cloud_thresholds_not_met",
        caches={"verdicts": {PRIMARY: False, BACKUP: False, LAST: False}},
        mode=CLOUD,
        reason="thresholds_not_met",
        is_fallback=True,
        detail_has="p95 latency 2400 ms > 2000 ms",
        skipped=[
            (PRIMARY, "thresholds_not_met"),
            (BACKUP, "thresholds_not_met"),
            (LAST, "thresholds_not_met"),
        ],
    ),
    Case(
        "primary_reason_wins_for_cloud",
        caches={"health": {"sglang-a": False}, "verdicts": {BACKUP: False, LAST: False}},
        mode=CLOUD,
        reason="server_unhealthy",
        is_fallback=True,
        skipped=[
            (PRIMARY, "server_unhealthy"),
            (BACKUP, "thresholds_not_met"),
            (LAST, "thresholds_not_met"),
        ],
    ),
    Case(
        "no_health_ever_status_unknown",
        caches={"health": {"sglang-a": None, "sglang-b": None, "vllm-c": None}},
        mode=CLOUD,
        reason="status_unknown",
        is_fallback=True,
        detail_has="no health reported",
        skipped=[(PRIMARY, "status_unknown"), (BACKUP, "status_unknown"), (LAST, "status_unknown")],
    ),
    Case(
        "no_verdict_ever_status_unknown",
        caches={"verdicts": {PRIMARY: None, BACKUP: None, LAST: None}},
        mode=CLOUD,
        reason="status_unknown",
        is_fallback=True,
        detail_has="no bakeoff verdict yet",
        skipped=[(PRIMARY, "status_unknown"), (BACKUP, "status_unknown"), (LAST, "status_unknown")],
    ),
    Case(
        "model_without_backend",
        policy={"routing": {"reflex": {"model_fallbacks": ["orphan-model"]}}},
        caches={"health": {"sglang-a": False}},
        mode=CLOUD,
        reason="server_unhealthy",
        is_fallback=True,
        skipped=[(PRIMARY, "server_unhealthy"), ("orphan-model", "server_unhealthy")],
    ),
    # -- GR-009 local_only --
    Case(
        "local_only_policy_refuses_cloud",
        {"stage": c.STAGE_PLAN},
        policy={"privacy": {"local_only": True}},
        refused="local_only_forbids_cloud",
        detail_has="policy privacy.local_only = true",
    ),
    Case(
        "local_only_request_refuses_fallback",
        {"local_only": True},
        caches=ALL_DOWN,
        refused="local_only_forbids_cloud",
        detail_has="request local_only = true",
    ),
    Case(
        "local_only_allows_reflex",
        {"local_only": True},
        policy={"privacy": {"local_only": True}},
        mode=REFLEX,
        reason="healthy_and_thresholds_met",
        model=PRIMARY,
    ),
    Case(
        "local_only_refuses_max_failures",
        {"consecutive_failures": 5, "local_only": True},
        refused="local_only_forbids_cloud",
    ),
    # -- GR-011 budgets --
    Case(
        "budget_calls_exhausted",
        {"stage": c.STAGE_VALIDATE},
        policy=CAP_CALLS,
        caches={"usage": (10, 0)},
        refused="budget_exhausted",
        detail_has="10 cloud calls in the last 24h >= budget.cloud_max_calls = 10",
    ),
    Case(
        "budget_tokens_exhausted",
        caches={"usage": (1, 50_001), **ALL_DOWN},
        policy=CAP_TOKENS,
        refused="budget_exhausted",
        detail_has="50001 cloud tokens",
    ),
    Case(
        "budget_under_cap",
        {"stage": c.STAGE_VALIDATE},
        policy=CAP_CALLS,
        caches={"usage": (9, 0)},
        mode=CLOUD,
        reason="stage_not_implement",
    ),
    Case(
        "budget_usage_unknown_fails_closed",
        {"stage": c.STAGE_VALIDATE},
        policy=CAP_CALLS,
        refused="budget_exhausted",
        detail_has="unknown",
    ),
    Case(
        "budget_not_checked_for_reflex",
        policy=CAP_CALLS,
        caches={"usage": (99, 0)},
        mode=REFLEX,
        reason="healthy_and_thresholds_met",
        model=PRIMARY,
    ),
    # -- fallback_to_cloud = false --
    Case(
        "no_fallback_to_cloud_refuses",
        policy={"routing": {"reflex": {"fallback_to_cloud": False}}},
        caches=ALL_DOWN,
        refused="server_unhealthy",
        detail_has="fallback_to_cloud = false",
    ),
    Case(
        "no_fallback_to_cloud_still_cloud_outside_implement",
        {"stage": c.STAGE_AUDIT},
        policy={"routing": {"reflex": {"fallback_to_cloud": False}}},
        mode=CLOUD,
        reason="stage_not_implement",
    ),
    # -- force_mode (bakeoff trials) --
    Case(
        "forced_reflex_needs_no_verdict",
        {"force_mode": REFLEX},
        policy={"routing": {"reflex": {"enabled": False}}},
        caches={"verdicts": {PRIMARY: False}},
        mode=REFLEX,
        reason="thresholds_not_met",
        model=PRIMARY,
        backend="sglang-a",
        forced=True,
        detail_has="bakeoff verdict not required",
    ),
    Case(
        "forced_reflex_skips_unhealthy",
        {"force_mode": REFLEX},
        caches={"health": {"sglang-a": False}},
        mode=REFLEX,
        reason="healthy_and_thresholds_met",
        model=BACKUP,
        forced=True,
        is_fallback=True,
        skipped=[(PRIMARY, "server_unhealthy")],
    ),
    Case(
        "forced_reflex_no_healthy_backend",
        {"force_mode": REFLEX},
        caches=ALL_DOWN,
        refused="server_unhealthy",
        detail_has="force_mode=REFLEX",
    ),
    Case(
        "forced_cloud",
        {"force_mode": CLOUD},
        mode=CLOUD,
        reason="cloud_default",
        model="deepseek-chat",
        forced=True,
    ),
    Case(
        "forced_cloud_under_local_only",
        {"force_mode": CLOUD, "local_only": True},
        refused="local_only_forbids_cloud",
    ),
    # -- other roles: MODEL-POLICY predicates as data --
    Case(
        "architect_low_confidence",
        {"role": ARCH, "stage": c.STAGE_PLAN, "confidence": 0.6},
        mode=CLOUD,
        reason="escalation_predicate",
        model="gpt-5.1-high",
        detail_has="confidence < 0.75 (got 0.6)",
    ),
    Case(
        "architect_confident",
        {"role": ARCH, "stage": c.STAGE_PLAN, "confidence": 0.9},
        mode=LOCAL,
        reason="local_default",
        model="qwen-14b-thinking",
    ),
    Case(
        "architect_no_confidence_stays_local",
        {"role": ARCH, "stage": c.STAGE_PLAN},
        mode=LOCAL,
        reason="local_default",
    ),
    Case(
        "architect_user_requested",
        {"role": ARCH, "stage": c.STAGE_PLAN, "user_requested_escalation": True},
        mode=CLOUD,
        reason="escalation_predicate",
        detail_has="user_requested_escalation is true",
    ),
    Case(
        "librarian_long_context",
        {"role": LIB, "stage": c.STAGE_SPECIFY, "context_estimate": 150_000},
        mode=CLOUD,
        reason="escalation_predicate",
        model="kimi-k2-instruct-0905",
        detail_has="context_estimate > 100000 (got 150000)",
    ),
    Case(
        "librarian_at_100k_stays_local",
        {"role": LIB, "stage": c.STAGE_SPECIFY, "context_estimate": 100_000},
        mode=LOCAL,
        reason="local_default",
        model="llama-3.1-8b",
    ),
    Case(
        "librarian_contradictions",
        {"role": LIB, "stage": c.STAGE_SPECIFY, "contradictions_detected": True},
        mode=CLOUD,
        reason="escalation_predicate",
        detail_has="contradictions_detected",
    ),
    Case(
        "librarian_tool_heavy",
        {"role": LIB, "stage": c.STAGE_SPECIFY, "tool_heavy": True},
        mode=CLOUD,
        reason="escalation_predicate",
        detail_has="tool_heavy",
    ),
    Case(
        "librarian_full_sweep",
        {"role": LIB, "stage": c.STAGE_SPECIFY, "full_sweep": True},
        mode=CLOUD,
        reason="escalation_predicate",
        detail_has="full_sweep",
    ),
    Case(
        "librarian_low_local_confidence",
        {"role": LIB, "stage": c.STAGE_SPECIFY, "confidence": 0.5},
        mode=CLOUD,
        reason="escalation_predicate",
        detail_has="confidence < 0.75",
    ),
    Case(
        "tutor_local",
        {"role": TUTOR, "stage": c.STAGE_TASKS},
        mode=LOCAL,
        reason="local_default",
        model="qwen2.5-coder-7b",
    ),
    Case(
        "judge_cloud_default",
        {"role": JUDGE, "stage": c.STAGE_AUDIT},
        mode=CLOUD,
        reason="cloud_default",
        model="gpt-5.1-high",
    ),
    Case(
        "judge_local_only_refused",
        {"role": JUDGE, "stage": c.STAGE_AUDIT, "local_only": True},
        refused="local_only_forbids_cloud",
    ),
    Case(
        "librarian_escalation_budget",
        {"role": LIB, "stage": c.STAGE_SPECIFY, "full_sweep": True},
        policy=CAP_CALLS,
        caches={"usage": (10, 0)},
        refused="budget_exhausted",
    ),
    Case(
        "implementer_predicate_from_policy",
        {"user_requested_escalation": True},
        policy={
            "routing": {
                "roles": {
                    "implementer": {
                        "escalate_when": [{"field": "user_requested_escalation", "op": "true"}]
                    }
                }
            }
        },
        mode=CLOUD,
        reason="escalation_predicate",
        is_fallback=True,
        detail_has="role implementer",
    ),
]


def request(**fields: Any) -> router_pb2.DecideRequest:
    base: dict[str, Any] = {
        "stage": c.STAGE_IMPLEMENT,
        "role": c.ROLE_IMPLEMENTER,
        "session_id": "s-1",
        "attempt": 1,
    }
    return router_pb2.DecideRequest(**(base | fields))


def build_router(
    policy_over: dict[str, Any], cache_kwargs: dict[str, Any]
) -> tuple[Router, list[c.Event]]:
    events: list[c.Event] = []
    loaded = make_policy(policy_over)
    caches = fill_caches(RouterCaches(), **cache_kwargs)
    router = Router(
        RoutingEngine(loaded, caches, clock=lambda: NOW), DecisionRecorder(events.append), loaded
    )
    return router, events


@pytest.mark.parametrize("case", CASES, ids=[k.id for k in CASES])
def test_decision_flow(case: Case) -> None:
    router, events = build_router(case.policy, case.caches)
    req = request(**case.request)
    decision_events = lambda: [e for e in events if e.type == c.EVENT_TYPE_ROUTING_DECISION]  # noqa: E731
    audits = lambda: [e for e in events if e.type == c.EVENT_TYPE_AUDIT]  # noqa: E731

    if case.refused:
        with pytest.raises(PolicyRefusal) as info:
            router.decide(req)
        err = info.value
        assert err.code == grpc.StatusCode.FAILED_PRECONDITION
        assert err.message.startswith(f"{case.refused}: ")
        assert case.detail_has in err.message
        # The same as data for programs: the reason and the refusal's decision id.
        assert err.reason == c.ERROR_REASON_ROUTE_REFUSED
        assert err.metadata == {
            "routing_reason": case.refused,
            "decision_id": err.decision.decision_id,
        }
        # Refusals are decisions too: recorded, with an audit event.
        (ev,) = decision_events()
        assert ev.reason == case.refused
        assert ev.mode == c.ROUTING_MODE_UNSPECIFIED
        assert ev.payload["refused"] is True
        assert ev.id == err.decision.decision_id
        (audit,) = audits()
        assert audit.payload["kind"] == "routing_refusal" and audit.payload["decision_id"] == ev.id
        return

    decision = router.decide(req)
    route = decision.route
    assert (route.mode, reason_name(route.reason)) == (case.mode, case.reason)
    if case.model:
        assert route.model == case.model
    if case.backend:
        assert route.backend == case.backend
    assert route.is_fallback is case.is_fallback
    assert [(s.model, reason_name(s.reason)) for s in route.skipped] == case.skipped
    assert route.forced is case.forced
    assert case.detail_has in route.detail

    (ev,) = decision_events()
    assert ev.id == decision.decision_id
    assert (ev.mode, ev.reason, ev.model, ev.backend) == (
        case.mode,
        case.reason,
        route.model,
        route.backend,
    )
    assert ev.is_fallback is case.is_fallback
    assert (
        ev.role == req.role and ev.stage == req.stage and ev.session_id == "s-1" and ev.attempt == 1
    )
    assert ev.policy_hash == router.policy.sha256 and len(ev.policy_hash) == 64
    assert ev.latency_ms == decision.latency_ms and ev.latency_ms >= 0
    if case.skipped:
        assert [(s["model"], s["reason"]) for s in ev.payload["skipped"]] == case.skipped
    else:
        assert "skipped" not in ev.payload
    # GR-005: a degradation leaves an audit event; a normal route does not.
    assert len(audits()) == (1 if case.is_fallback else 0)


def test_a_changed_model_identity_says_why() -> None:
    caches = fill_caches(
        RouterCaches(),
        identities={"sglang-a": "sglang:/w/v2"},
        verdict_identities={PRIMARY: "sglang:/w/v1"},
    )
    route = RoutingEngine(make_policy({}), caches, clock=lambda: NOW).decide(request())
    detail = route.skipped[0].detail
    assert (
        "model identity changed" in detail and "sglang:/w/v1" in detail and "sglang:/w/v2" in detail
    )
    assert "re-run the bakeoff" in detail


def test_every_routing_reason_is_covered() -> None:
    """The table exercises every RoutingReason the Router can give."""
    seen = {k.reason for k in CASES if k.reason} | {k.refused for k in CASES if k.refused}
    for k in CASES:
        seen |= {r for _, r in k.skipped}
    expected = {reason_name(v) for v in c.RoutingReason.values() if v}
    assert expected <= seen, expected - seen


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"role": c.ROLE_UNSPECIFIED}, "role"),
        ({"role": 99}, "role"),
        ({"stage": c.STAGE_UNSPECIFIED}, "stage"),
        ({"force_mode": c.ROUTING_MODE_LOCAL}, "force_mode"),
        ({"role": ARCH, "force_mode": REFLEX}, "only to ROLE_IMPLEMENTER"),
        ({"stage": c.STAGE_PLAN, "force_mode": REFLEX}, "needs stage STAGE_IMPLEMENT"),
    ],
)
def test_malformed_requests_are_invalid_argument(fields: dict[str, Any], message: str) -> None:
    router, events = build_router({}, {})
    with pytest.raises(InvalidArgument) as info:
        router.decide(request(**fields))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.message
    assert events == []


def test_audit_log_line_for_a_fallback(caplog: pytest.LogCaptureFixture) -> None:
    router, _ = build_router({}, ALL_DOWN)
    with caplog.at_level("WARNING", logger="speckit.router.audit"):
        decision = router.decide(request(session_id="s-9", attempt=3))
    (record,) = caplog.records
    assert record.getMessage() == "routing_fallback"
    fields = record.fields  # type: ignore[attr-defined]
    assert fields["decision_id"] == decision.decision_id
    assert (fields["mode"], fields["reason"], fields["session_id"], fields["attempt"]) == (
        "cloud",
        "server_unhealthy",
        "s-9",
        3,
    )
    assert fields["policy_hash"] == router.policy.sha256


def test_no_audit_log_line_for_a_normal_route(caplog: pytest.LogCaptureFixture) -> None:
    router, _ = build_router({}, {})
    with caplog.at_level("INFO", logger="speckit.router.audit"):
        router.decide(request())
    assert caplog.records == []


def test_decision_ids_are_unique_uuid4() -> None:
    import uuid

    from speckit_reflex.router.core import new_decision_id

    ids = [new_decision_id() for _ in range(2000)]
    assert len(set(ids)) == 2000
    for i in ids[:200]:
        parsed = uuid.UUID(i)
        assert (str(parsed), parsed.version, parsed.variant) == (i, 4, uuid.RFC_4122)
