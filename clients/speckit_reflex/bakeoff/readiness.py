"""Wait until the Router would route a forced reflex attempt, so the first
trials of a run are not refused while health caches are still filling (the
Router learns backend health from Inference on its own refresh interval)."""

from __future__ import annotations

import asyncio
import time

import grpc

from speckit_reflex.clients.router import RouterClient, refusal_reason
from speckit_reflex.v1 import common_pb2, router_pb2

# Refusals that a little patience can cure; anything else is final.
_TRANSIENT = frozenset({"server_unhealthy", "status_unknown"})


class ReflexNotReady(RuntimeError):
    """No reflex backend became routable in time."""


async def wait_for_reflex_route(
    router: RouterClient, timeout_s: float = 90.0, poll_s: float = 1.0
) -> router_pb2.RoutingDecision:
    """The first forced-reflex decision the Router grants (its event is kept:
    a readiness probe is part of the audit trail like any decision)."""
    deadline = time.monotonic() + timeout_s
    request = router_pb2.DecideRequest(
        stage=common_pb2.STAGE_IMPLEMENT,
        role=common_pb2.ROLE_IMPLEMENTER,
        session_id="bakeoff-readiness",
        attempt=1,
        force_mode=common_pb2.ROUTING_MODE_REFLEX,
    )
    while True:
        try:
            return await router.decide(request, timeout=10)
        except grpc.aio.AioRpcError as exc:
            reason = refusal_reason(exc)
            if reason is None:
                # Not the policy: the Router itself failed (unreachable, past
                # its deadline, ...). An error for the caller to report as such.
                raise
            if reason not in _TRANSIENT or time.monotonic() >= deadline:
                raise ReflexNotReady(f"no reflex backend is routable: {exc.details()}") from None
        await asyncio.sleep(poll_s)
