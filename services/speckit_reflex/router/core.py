"""The Router's service layer: decide, time it, record it, refuse if needed."""

from __future__ import annotations

import os
import time

from opentelemetry.trace import Span, Tracer

from speckit_reflex.errors import FailedPrecondition
from speckit_reflex.policy import LoadedPolicy
from speckit_reflex.router.engine import RoutingEngine, reason_name
from speckit_reflex.router.evidence import MODE_NAMES, Decision, DecisionRecorder
from speckit_reflex.runtime.metrics import Metrics
from speckit_reflex.v1 import common_pb2, router_pb2


def new_decision_id() -> str:
    """A random (version 4) UUID string; about 3x cheaper than str(uuid.uuid4()),
    which matters at thousands of decisions per second."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


class PolicyRefusal(FailedPrecondition):
    """A route the policy forbids (local_only, budget, fallback_to_cloud =
    false, no healthy backend for a forced or pinned reflex route); recorded
    like any decision. Callers read ErrorInfo reason ROUTE_REFUSED and
    metadata `routing_reason` ("local_only_forbids_cloud") and `decision_id`;
    the message says the same for humans."""

    def __init__(self, decision: Decision):
        route = decision.route
        why = reason_name(route.refusal)
        super().__init__(
            f"{why}: {route.refusal_detail}",
            reason=common_pb2.ERROR_REASON_ROUTE_REFUSED,
            metadata={"routing_reason": why, "decision_id": decision.decision_id},
        )
        self.decision = decision


class Router:
    """Answers Decide from the engine and records every answer, refusals too."""

    def __init__(
        self,
        engine: RoutingEngine,
        recorder: DecisionRecorder,
        policy: LoadedPolicy,
        metrics: Metrics | None = None,
        tracer: Tracer | None = None,
    ):
        self._engine = engine
        self._recorder = recorder
        self._policy = policy
        self._metrics = metrics
        self._tracer = tracer

    @property
    def policy(self) -> LoadedPolicy:
        """The effective policy snapshot the decisions are made under."""
        return self._policy

    def decide(self, req: router_pb2.DecideRequest) -> Decision:
        """Decide one attempt's route. Raises PolicyRefusal (FAILED_PRECONDITION)
        for a forbidden cloud route and InvalidArgument for a malformed request."""
        if self._tracer is None:
            return self._decide(req)
        # The decision's span: its RoutingDecision event carries this span's ids.
        with self._tracer.start_as_current_span("router.decide") as span:
            try:
                decision = self._decide(req)
            except PolicyRefusal as refused:
                _describe(span, refused.decision, req)
                raise
            _describe(span, decision, req)
            return decision

    def _decide(self, req: router_pb2.DecideRequest) -> Decision:
        started = time.perf_counter()
        route = self._engine.decide(req)
        decision = Decision(
            new_decision_id(), route, (time.perf_counter() - started) * 1000.0, self._policy.sha256
        )
        self._recorder.record(decision, req)
        if self._metrics is not None:
            # Labelled like the RoutingDecision event: a refusal routes nowhere.
            refused = route.refused
            self._metrics.routing_decisions(
                "none" if refused else MODE_NAMES[route.mode],
                reason_name(route.refusal if refused else route.reason),
                route.model,
            ).inc()
        if route.refused:
            raise PolicyRefusal(decision)
        return decision


def _describe(span: Span, decision: Decision, req: router_pb2.DecideRequest) -> None:
    route = decision.route
    span.set_attributes(
        {
            "speckit.decision_id": decision.decision_id,
            "speckit.mode": "none" if route.refused else MODE_NAMES[route.mode],
            "speckit.reason": reason_name(route.refusal if route.refused else route.reason),
            "speckit.model": route.model,
            "speckit.backend": route.backend,
            "speckit.is_fallback": route.is_fallback,
            "speckit.session_id": req.session_id,
            "speckit.run_id": req.run_id,
            "speckit.attempt": req.attempt,
        }
    )
