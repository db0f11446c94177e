"""Typed async client of the Router service.

    async with open_channel(ChannelConfig.from_env("router")) as channel:
        router = RouterClient(channel)
        decision = await router.decide(stage=Stage.STAGE_IMPLEMENT, role=Role.ROLE_IMPLEMENTER,
                                       session_id="s1", attempt=1)

A refused cloud route raises grpc.aio.AioRpcError with FAILED_PRECONDITION
whose details start with the reason ("local_only_forbids_cloud: ...");
`refusal_reason()` extracts it.
"""

from __future__ import annotations

import grpc
from grpc import aio

from speckit_reflex.v1 import router_pb2, router_pb2_grpc

_REFUSAL_REASONS = (
    "local_only_forbids_cloud",
    "budget_exhausted",
    "server_unhealthy",
    "thresholds_not_met",
    "status_unknown",
    "max_failures_reached",
    "escalation_predicate",
)


class RouterClient:
    """Thin wrapper over the generated Router stub."""

    def __init__(self, channel: aio.Channel):
        self._stub = router_pb2_grpc.RouterStub(channel)

    async def decide(
        self,
        request: router_pb2.DecideRequest | None = None,
        *,
        timeout: float | None = None,
        **fields: object,
    ) -> router_pb2.RoutingDecision:
        """Route one attempt; pass a DecideRequest or its fields as keywords."""
        req = request if request is not None else router_pb2.DecideRequest(**fields)  # type: ignore[arg-type]
        return await self._stub.Decide(req, timeout=timeout)

    async def get_policy(self, *, timeout: float | None = None) -> router_pb2.PolicySnapshot:
        """The effective policy snapshot (canonical JSON), its sha256 and source."""
        return await self._stub.GetPolicy(router_pb2.GetPolicyRequest(), timeout=timeout)


def refusal_reason(exc: grpc.aio.AioRpcError) -> str | None:
    """The reason of a refused route ("budget_exhausted", ...), or None if `exc` is not a refusal."""
    if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
        return None
    head = (exc.details() or "").split(":", 1)[0]
    return head if head in _REFUSAL_REASONS else None
