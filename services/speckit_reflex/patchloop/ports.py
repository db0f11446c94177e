"""What the loop needs from its peers, and the gRPC adapters that provide it.

The core depends on these small protocols only, so tests can drive it with
in-memory ports and the service wires the gRPC ones.
"""

from __future__ import annotations

import time
from typing import Protocol

import grpc
from grpc import aio

from speckit_reflex.clients.errors import error_of
from speckit_reflex.clients.router import RouterClient, refusal_reason
from speckit_reflex.contract import ErrorReason
from speckit_reflex.v1 import (
    capsule_pb2,
    capsule_pb2_grpc,
    common_pb2,
    inference_pb2,
    inference_pb2_grpc,
    router_pb2,
)


class RouteRefused(Exception):
    """The policy forbids the route (local_only, budget, ...): the Router
    answered ErrorInfo ROUTE_REFUSED. `reason` is its routing_reason
    ("budget_exhausted"), `detail` the Router's message for humans."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail or reason


class RouterFailed(Exception):
    """No route, and not because of the policy: the Router could not be
    reached, did not answer in time, or failed. An error of the run, never a
    refusal. `reason` says which ("router_unavailable: UNAVAILABLE: ...")."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ModelCallFailed(Exception):
    """The model call did not produce a reply (unreachable, deadline, no key...).
    `reason` is the adapter's ErrorInfo reason (UNSPECIFIED when it sent none)."""

    def __init__(
        self,
        code: str,
        detail: str,
        reason: ErrorReason = common_pb2.ERROR_REASON_UNSPECIFIED,
    ):
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.reason = reason


class SessionHistoryUnavailable(Exception):
    """The session's attempt history could not be read."""


class RouterPort(Protocol):
    async def decide(self, request: router_pb2.DecideRequest) -> router_pb2.RoutingDecision:
        """The route of one attempt; raises RouteRefused when the policy forbids
        it and RouterFailed when there is no answer at all."""
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
        self._router = RouterClient(channel)
        self._timeout_s = timeout_s

    async def decide(self, request: router_pb2.DecideRequest) -> router_pb2.RoutingDecision:
        try:
            return await self._router.decide(request, timeout=self._timeout_s)
        except aio.AioRpcError as exc:
            # Only the Router's ROUTE_REFUSED is the policy saying no; read
            # from the ErrorInfo, never from the message.
            refused = refusal_reason(exc)
            if refused is not None:
                raise RouteRefused(refused, exc.details() or refused) from None
            err = error_of(exc)
            if err.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise RouterFailed(f"router_unavailable: {err.code.name}: {err.message}") from None
            why = f" [{err.reason_text}]" if err.reason_text else ""
            raise RouterFailed(f"router_error: {err.code.name}{why}: {err.message}") from None


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
            err = error_of(exc)
            raise ModelCallFailed(err.code.name.lower(), err.message, err.reason) from None
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
