"""Typed async client of the Inference Adapter.

    async with InferenceClient.connect(ChannelConfig.from_env("inference")) as llm:
        reply = await llm.complete([("user", "hi")], json_schema=schema, mode=RoutingMode.REFLEX)

Replies are the generated protos (`CompleteReply`, `HealthReply`, …); gRPC
failures surface as `grpc.aio.AioRpcError` with the adapter's status code and
an ErrorInfo reason, read with `speckit_reflex.clients.errors.error_of`
(FAILED_PRECONDITION LOCAL_ONLY_FORBIDS_CLOUD or CLOUD_KEY_MISSING,
INVALID_ARGUMENT INVALID_FIELD for a bad field or schema, UNAVAILABLE
ALL_BACKENDS_FAILED, DEADLINE_EXCEEDED, NOT_FOUND UNKNOWN_BACKEND or
NO_BACKEND_FOR_MODEL).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Iterable, Mapping
from typing import Any

from grpc import aio

from speckit_reflex.clients.channel import ChannelConfig, open_channel
from speckit_reflex.v1 import common_pb2, inference_pb2, inference_pb2_grpc

Message = tuple[str, str] | Mapping[str, str] | inference_pb2.ChatMessage


def _message(m: Message) -> inference_pb2.ChatMessage:
    if isinstance(m, inference_pb2.ChatMessage):
        return m
    if isinstance(m, tuple):
        return inference_pb2.ChatMessage(role=m[0], content=m[1])
    return inference_pb2.ChatMessage(role=m["role"], content=m["content"])


class InferenceClient:
    """Thin wrapper over the generated Inference stub."""

    def __init__(self, channel: aio.Channel, *, owns_channel: bool = False):
        self._channel = channel
        self._owns = owns_channel
        self._stub = inference_pb2_grpc.InferenceStub(channel)

    @classmethod
    def connect(cls, cfg: ChannelConfig) -> InferenceClient:
        """A client on its own channel (closed by `close()` / `async with`)."""
        return cls(open_channel(cfg), owns_channel=True)

    async def close(self) -> None:
        if self._owns:
            await self._channel.close()

    async def __aenter__(self) -> InferenceClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def list_models(
        self, backend: str = "", *, timeout: float | None = 10.0
    ) -> inference_pb2.ListModelsReply:
        """Models of one backend (or of every configured backend) and the unreachable ones."""
        return await self._stub.ListModels(
            inference_pb2.ListModelsRequest(backend=backend), timeout=timeout
        )

    async def health(
        self, backend: str = "", refresh: bool = False, *, timeout: float | None = 10.0
    ) -> inference_pb2.HealthReply:
        """Cached backend health (`refresh=True` probes now). Judge staleness by `checked_at`."""
        return await self._stub.Health(
            inference_pb2.HealthRequest(backend=backend, refresh=refresh), timeout=timeout
        )

    @staticmethod
    def request(
        messages: Iterable[Message],
        *,
        backend: str = "",
        model: str = "",
        max_tokens: int = 0,
        temperature: float | None = None,
        seed: int | None = None,
        json_schema: str | Mapping[str, Any] = "",
        schema_name: str = "",
        max_validation_retries: int | None = None,
        mode: common_pb2.RoutingMode.ValueType = common_pb2.ROUTING_MODE_REFLEX,
        role: common_pb2.Role.ValueType = common_pb2.ROLE_IMPLEMENTER,
        session_id: str = "",
        run_id: str = "",
        decision_id: str = "",
        attempt: int = 0,
        fallback_reason: str = "",
    ) -> inference_pb2.CompleteRequest:
        """A CompleteRequest; `json_schema` may be a dict (serialised here)."""
        schema = json_schema if isinstance(json_schema, str) else json.dumps(json_schema)
        req = inference_pb2.CompleteRequest(
            backend=backend,
            model=model,
            messages=[_message(m) for m in messages],
            max_tokens=max_tokens,
            json_schema=schema,
            schema_name=schema_name,
            mode=mode,
            role=role,
            session_id=session_id,
            run_id=run_id,
            decision_id=decision_id,
            attempt=attempt,
            fallback_reason=fallback_reason,
        )
        if temperature is not None:
            req.temperature = temperature
        if seed is not None:
            req.seed = seed
        if max_validation_retries is not None:
            req.max_validation_retries = max_validation_retries
        return req

    async def complete(
        self, messages: Iterable[Message], *, timeout: float | None = None, **fields: Any
    ) -> inference_pb2.CompleteReply:
        """One whole reply. `timeout` is the gRPC deadline, which bounds every upstream HTTP call.

        Other keyword arguments are those of `request()`. With a schema, check
        `reply.schema_valid`: when the policy requires a schema, `content` is
        empty unless it validated.
        """
        return await self.send(self.request(messages, **fields), timeout=timeout)

    async def send(
        self, request: inference_pb2.CompleteRequest, *, timeout: float | None = None
    ) -> inference_pb2.CompleteReply:
        """`complete()` of a request built beforehand (with `request()`)."""
        return await self._stub.Complete(request, timeout=timeout)

    def stream_complete(
        self, messages: Iterable[Message], *, timeout: float | None = None, **fields: Any
    ) -> AsyncGenerator[inference_pb2.CompleteChunk, None]:
        """Chunks: `delta` texts as the model writes them, then one `final` CompleteReply.

        Deltas are provisional under a schema (a rejected attempt's deltas come
        before the retry's); the final reply is authoritative.
        """
        return self.send_stream(self.request(messages, **fields), timeout=timeout)

    async def send_stream(
        self, request: inference_pb2.CompleteRequest, *, timeout: float | None = None
    ) -> AsyncGenerator[inference_pb2.CompleteChunk, None]:
        """`stream_complete()` of a request built beforehand (with `request()`)."""
        call = self._stub.StreamComplete(request, timeout=timeout)
        try:
            async for chunk in call:
                yield chunk
        finally:
            # A caller that stops reading early cancels the RPC, which closes
            # the upstream HTTP request in the adapter.
            call.cancel()
