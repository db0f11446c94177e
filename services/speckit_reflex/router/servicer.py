"""gRPC transport of the Router: proto in, one core call, proto out."""

from __future__ import annotations

from grpc import aio

from speckit_reflex.router.core import Router
from speckit_reflex.router.evidence import Decision
from speckit_reflex.runtime.validate import Range, Rules, Text, check_message
from speckit_reflex.v1 import router_pb2, router_pb2_grpc

# Bounds of a Decide request; runtime.validate adds NUL, enum and finite
# number checks on every field. The ids land in Capsule (session_id is
# indexed there), the counts in its 32-bit columns.
DECIDE: Rules = {
    "session_id": Text(256),
    "run_id": Text(128),
    "model": Text(256),
    "attempt": Range(0, 1_000_000),
    "consecutive_failures": Range(0, 1_000_000),
    "context_estimate": Range(0, 10**12),
    "confidence": Range(0, 1),
}


def decision_to_proto(
    decision: Decision, req: router_pb2.DecideRequest
) -> router_pb2.RoutingDecision:
    """The wire form of a decision."""
    r = decision.route
    return router_pb2.RoutingDecision(
        decision_id=decision.decision_id,
        role=r.role,
        stage=r.stage,
        mode=r.mode,
        reason=r.reason,
        detail=r.detail,
        model=r.model,
        backend=r.backend,
        endpoint=r.endpoint,
        is_fallback=r.is_fallback,
        skipped=[
            router_pb2.ChainSkip(model=s.model, backend=s.backend, reason=s.reason, detail=s.detail)
            for s in r.skipped
        ],
        latency_ms=decision.latency_ms,
        policy_hash=decision.policy_hash,
        session_id=req.session_id,
        attempt=req.attempt,
        forced=r.forced,
        verdict_waived=r.verdict_waived,
    )


class RouterServicer(router_pb2_grpc.RouterServicer):
    def __init__(self, router: Router):
        self._router = router

    async def Decide(
        self,
        request: router_pb2.DecideRequest,
        context: aio.ServicerContext[router_pb2.DecideRequest, router_pb2.RoutingDecision],
    ) -> router_pb2.RoutingDecision:
        check_message(request, DECIDE)
        return decision_to_proto(self._router.decide(request), request)

    async def GetPolicy(
        self,
        request: router_pb2.GetPolicyRequest,
        context: aio.ServicerContext[router_pb2.GetPolicyRequest, router_pb2.PolicySnapshot],
    ) -> router_pb2.PolicySnapshot:
        p = self._router.policy
        return router_pb2.PolicySnapshot(json=p.snapshot_json, sha256=p.sha256, source=p.source)
