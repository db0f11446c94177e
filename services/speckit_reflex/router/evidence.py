"""Evidence of routing: a RoutingDecision event for every decision, and for
every degradation (a fallback or a refusal) an AUDIT event plus a structured
audit log line (GR-005: no silent degradation; GR-013: minimal provenance,
which includes the policy hash)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from speckit_reflex.contract import enum_names
from speckit_reflex.router.engine import ROLE_KEYS, Route, reason_name
from speckit_reflex.v1 import common_pb2, router_pb2

log = logging.getLogger("speckit.router.audit")

MODE_NAMES = enum_names(common_pb2.RoutingMode)


@dataclass(frozen=True, slots=True)
class Decision:
    """A route with its identity and cost, as answered and recorded."""

    decision_id: str
    route: Route
    latency_ms: float
    policy_hash: str


def _rare_payload(route: Route) -> dict[str, str | bool | list[dict[str, str]]]:
    """Payload parts of fallbacks, forced routes and refusals."""
    payload: dict[str, str | bool | list[dict[str, str]]] = {}
    if route.skipped:
        payload["skipped"] = [
            {
                "model": s.model,
                "backend": s.backend,
                "reason": reason_name(s.reason),
                "detail": s.detail,
            }
            for s in route.skipped
        ]
    if route.forced:
        payload["forced"] = True
    if route.verdict_waived:
        payload["verdict_waived"] = True
    if route.refused:
        # A refusal routes nowhere: the event's mode stays unspecified and
        # the payload says what was refused and why it was wanted.
        payload["refused"] = True
        payload["would_route"] = MODE_NAMES[route.mode]
        payload["cause"] = reason_name(route.reason)
        payload["refusal_detail"] = route.refusal_detail
    return payload


class DecisionRecorder:
    """Turns decisions into events for Capsule (through a non-blocking `emit`)."""

    def __init__(self, emit: Callable[[common_pb2.Event], None], logger: logging.Logger = log):
        self._emit = emit
        self._log = logger

    def record(self, decision: Decision, req: router_pb2.DecideRequest) -> None:
        """Emit the RoutingDecision event; for a degradation also the audit trail."""
        route = decision.route
        refused = route.refused
        event = common_pb2.Event(
            id=decision.decision_id,
            type=common_pb2.EVENT_TYPE_ROUTING_DECISION,
            role=route.role,
            mode=common_pb2.ROUTING_MODE_UNSPECIFIED if refused else route.mode,
            model=route.model,
            backend=route.backend,
            stage=route.stage,
            session_id=req.session_id,
            run_id=req.run_id,
            reason=reason_name(route.refusal if refused else route.reason),
            is_fallback=route.is_fallback,
            latency_ms=decision.latency_ms,
            attempt=req.attempt,
            policy_hash=decision.policy_hash,
        )
        now_ns = time.time_ns()
        event.time.seconds, event.time.nanos = divmod(now_ns, 1_000_000_000)
        # Struct fields set one by one: much cheaper than Struct.update() on
        # the hot path, which a normal decision always takes.
        fields = event.payload.fields
        fields["detail"].string_value = route.detail
        if route.endpoint:
            fields["endpoint"].string_value = route.endpoint
        if route.skipped or route.forced or refused or route.verdict_waived:
            event.payload.update(_rare_payload(route))
        self._emit(event)
        if route.degraded:
            self._audit(decision, event, req)

    def _audit(
        self, decision: Decision, event: common_pb2.Event, req: router_pb2.DecideRequest
    ) -> None:
        route = decision.route
        kind = (
            "routing_refusal"
            if route.refused
            else "verdict_waived"
            if route.verdict_waived
            else "routing_fallback"
        )
        audit = common_pb2.Event()
        audit.CopyFrom(event)
        audit.id = str(uuid.uuid4())
        audit.type = common_pb2.EVENT_TYPE_AUDIT
        audit.payload.update({"kind": kind, "decision_id": decision.decision_id})
        self._emit(audit)
        self._log.warning(
            kind,
            extra={
                "fields": {
                    "decision_id": decision.decision_id,
                    "role": ROLE_KEYS.get(route.role, str(route.role)),
                    "mode": MODE_NAMES[route.mode],
                    "reason": event.reason,
                    "cause": reason_name(route.reason),
                    "model": route.model,
                    "is_fallback": route.is_fallback,
                    "detail": route.refusal_detail or route.detail,
                    "session_id": req.session_id,
                    "attempt": req.attempt,
                    "policy_hash": decision.policy_hash,
                }
            },
        )
