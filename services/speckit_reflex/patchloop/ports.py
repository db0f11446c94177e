"""What the loop needs from its peers, and the gRPC adapters that provide it.

The core depends on these small protocols only, so tests can drive it with
in-memory ports and the service wires the gRPC ones.
"""

from __future__ import annotations

import time
from typing import Protocol

import grpc
from grpc import aio

from speckit_reflex.v1 import (
    capsule_pb2,
    capsule_pb2_grpc,
    common_pb2,
    inference_pb2,
    inference_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
)


class RouteRefused(Exception):
    """The Router refused a route the policy forbids (local_only, budget)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ModelCallFailed(Exception):
    """The model call did not produce a reply (unreachable, deadline, no key...)."""

    def __init__(self, code: str, detail: str):
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class SessionHistoryUnavailable(Exception):
    """The session's attempt history could not be read."""


class RouterPort(Protocol):
    async def decide(self, request: router_pb2.DecideRequest) -> router_pb2.RoutingDecision:
        """The route of one attempt; raises RouteRefused when the policy forbids it."""
        ...


class InferencePort(Protocol):
    async def complete(
        self, request: inference_pb2.CompleteRequest, timeout_s: float
    ) -> inference_pb2.CompleteReply:
        """The final reply of a streamed completion; raises ModelCallFailed."""
        ...


class EventPort(Protocol):
    def emit(self, event: common_pb2.Event) -> None:
        """Queue an event for Capsule; never blocks the loop."""
        ...


class GrpcRouter:
    """RouterPort over the Router service."""

    def __init__(self, channel: aio.Channel, timeout_s: float = 10.0):
        self._stub = router_pb2_grpc.RouterStub(channel)
        self._timeout_s = timeout_s

    async def decide(self, request: router_pb2.DecideRequest) -> router_pb2.RoutingDecision:
        try:
            return await self._stub.Decide(request, timeout=self._timeout_s)
        except aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                raise RouteRefused(exc.details() or "refused") from None
            # No route at all is also a refusal to go on, with why.
            raise RouteRefused(f"router_unavailable: {exc.code().name}: {exc.details()}") from None


class GrpcInference:
    """InferencePort over the Inference Adapter's StreamComplete (so TTFT is measured)."""

    def __init__(self, channel: aio.Channel):
        self._stub = inference_pb2_grpc.InferenceStub(channel)

    async def complete(
        self, request: inference_pb2.CompleteRequest, timeout_s: float
    ) -> inference_pb2.CompleteReply:
        final: inference_pb2.CompleteReply | None = None
        try:
            async for chunk in self._stub.StreamComplete(request, timeout=timeout_s):
                if chunk.WhichOneof("kind") == "final":
                    final = chunk.final
        except aio.AioRpcError as exc:
            raise ModelCallFailed(exc.code().name.lower(), exc.details() or "") from None
        if final is None:
            raise ModelCallFailed("no_reply", "the stream ended without a final reply")
        return final


class SessionHistoryPort(Protocol):
    async def consecutive_failures(self, session_id: str) -> int:
        """Failed attempts of the session since its last successful one, from
        the record; raises SessionHistoryUnavailable."""
        ...


class CapsuleSessionHistory:
    """SessionHistoryPort over Capsule's PatchAttempt events of the last `window_s`.

    Used for a session this PatchLoop process has not seen (after a restart,
    or a session whose earlier runs another replica served), so that
    escalation after max_failures does not start over.
    """

    def __init__(
        self,
        channel: aio.Channel,
        *,
        window_s: float = 86_400.0,
        page_size: int = 1000,
        max_pages: int = 20,
        timeout_s: float = 2.0,
    ):
        self._stub = capsule_pb2_grpc.CapsuleStub(channel)
        self._window_s = window_s
        self._page_size = page_size
        self._max_pages = max_pages
        self._timeout_s = timeout_s

    async def consecutive_failures(self, session_id: str) -> int:
        req = capsule_pb2.QueryEventsRequest(
            type=common_pb2.EVENT_TYPE_PATCH_ATTEMPT,
            session_id=session_id,
            page_size=self._page_size,
        )
        req.since.FromMicroseconds(int((time.time() - self._window_s) * 1_000_000))
        count = 0
        try:
            for _ in range(self._max_pages):  # oldest first
                reply = await self._stub.QueryEvents(req, timeout=self._timeout_s)
                for event in reply.events:
                    count = 0 if event.success else count + 1
                if not reply.next_page_token:
                    return count
                req.page_token = reply.next_page_token
        except aio.AioRpcError as exc:
            raise SessionHistoryUnavailable(
                f"capsule: {exc.code().name}: {exc.details()}"
            ) from None
        raise SessionHistoryUnavailable(
            f"more than {self._max_pages * self._page_size} attempts in the session's last {self._window_s:g} s"
        )
