"""Typed async client of the Router service.

    async with open_channel(ChannelConfig.from_env("router")) as channel:
        router = RouterClient(channel)
        decision = await router.decide(stage=Stage.STAGE_IMPLEMENT, role=Role.ROLE_IMPLEMENTER,
                                       session_id="s1", attempt=1)

A route the policy forbids raises grpc.aio.AioRpcError with
FAILED_PRECONDITION and ErrorInfo reason ROUTE_REFUSED; `refusal_reason()`
reads why ("local_only_forbids_cloud", a RoutingReason name) from its
metadata, never from the message.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc import aio

from speckit_reflex.clients.errors import error_of
from speckit_reflex.v1 import common_pb2, router_pb2, router_pb2_grpc


class RouterClient:
    """Thin wrapper over the generated Router stub."""

    def __init__(self, channel: aio.Channel):
        self._stub = router_pb2_grpc.RouterStub(channel)

    async def decide(
        self,
        request: router_pb2.DecideRequest | None = None,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> router_pb2.RoutingDecision:
        """Route one attempt; pass a DecideRequest or its fields as keywords."""
        req = request if request is not None else router_pb2.DecideRequest(**fields)
        return await self._stub.Decide(req, timeout=timeout)

    async def get_policy(self, *, timeout: float | None = None) -> router_pb2.PolicySnapshot:
        """The effective policy snapshot (canonical JSON), its sha256 and source."""
        return await self._stub.GetPolicy(router_pb2.GetPolicyRequest(), timeout=timeout)


def refusal_reason(exc: grpc.RpcError) -> str | None:
    """Why the policy refused the route ("budget_exhausted", the RoutingReason
    name in lower case), or None if `exc` is not a refusal (an unreachable
    Router, a malformed request, ...)."""
    err = error_of(exc)
    if err.reason != common_pb2.ERROR_REASON_ROUTE_REFUSED:
        return None
    return err.metadata.get("routing_reason") or "route_refused"
