"""Server interceptors: domain errors to statuses, and bearer-token auth.

Every failure answered here carries, besides its code and message, a
google.rpc.Status with one google.rpc.ErrorInfo (domain "speckit-reflex",
the ErrorReason of common.proto, metadata) in the trailing metadata, so
that callers read why from data, not from the message.
"""

from __future__ import annotations

import hmac
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, cast

import grpc
from google.protobuf import any_pb2
from google.rpc.error_details_pb2 import ErrorInfo
from google.rpc.status_pb2 import Status
from grpc import aio
from grpc_status import rpc_status

from speckit_reflex.contract import ERROR_DOMAIN, ErrorReason, error_reason_text
from speckit_reflex.errors import DomainError
from speckit_reflex.runtime.handlers import (
    Context,
    Continuation,
    MethodHandler,
    StreamBehaviour,
    UnaryBehaviour,
    WritingBehaviour,
)
from speckit_reflex.runtime.redact import redact_text
from speckit_reflex.v1 import common_pb2

log = logging.getLogger("speckit.rpc")

# Health and reflection stay reachable without a token so that probes and
# load balancers work; they reveal nothing but service names.
_OPEN_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


# The message travels twice in the trailers (grpc-message, percent-encoded:
# up to 3 bytes per byte, and inside the Status). A client drops trailers over
# 16 KiB and, between 8 and 16 KiB, some at random (grpc's metadata limits),
# turning the answer into RESOURCE_EXHAUSTED: so both stay far below 8 KiB.
# The server log keeps the whole message.
MESSAGE_MAX_BYTES = 1024
METADATA_VALUE_MAX_CHARS = 256
METADATA_MAX_KEYS = 16


def _bounded(text: str, max_bytes: int) -> str:
    raw = text.encode()
    if len(raw) <= max_bytes:
        return text
    return raw[: max_bytes - 3].decode(errors="ignore") + "…"


def _redacted(message: str, field: str) -> str:
    """`message` without credential-shaped parts. A refusal starts with the
    path of its field, kept as it is: the redactor's name rule would blank the
    problem after a field named like a secret ("page_token: [REDACTED] a NUL
    byte"), and that name is what the message is about."""
    head = f"{field}: " if field and message.startswith(f"{field}: ") else ""
    return head + redact_text(message[len(head) :])


def rich_status(
    code: grpc.StatusCode,
    message: str,
    reason: ErrorReason,
    metadata: Mapping[str, str] | None = None,
) -> grpc.Status:
    """The status with `code` and `message` (bounded) whose trailing metadata
    carries google.rpc.Status(code, message, [ErrorInfo(reason, domain, metadata)])."""
    # Messages and metadata quote request fields and upstream replies: they
    # leave redacted (a key of a known shape, a secret-named value), as logs do.
    info = ErrorInfo(
        reason=error_reason_text(reason),
        domain=ERROR_DOMAIN,
        metadata={
            k: redact_text(v[: 4 * METADATA_VALUE_MAX_CHARS])[:METADATA_VALUE_MAX_CHARS]
            for k, v in list((metadata or {}).items())[:METADATA_MAX_KEYS]
        },
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    field = (metadata or {}).get("field", "")
    message = _bounded(_redacted(message[: 4 * MESSAGE_MAX_BYTES], field), MESSAGE_MAX_BYTES)
    return rpc_status.to_status(Status(code=code.value[0], message=message, details=[detail]))


async def abort(
    context: aio.ServicerContext[Any, Any],
    code: grpc.StatusCode,
    message: str,
    reason: ErrorReason,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """End the RPC with `code`, `message` and the ErrorInfo of `reason`."""
    status = rich_status(code, message, reason, metadata)
    await context.abort(status.code, status.details, status.trailing_metadata)


async def _abort_for(exc: Exception, method: str, context: Context) -> None:
    if isinstance(exc, DomainError):
        log.info(
            "rpc failed",
            extra={
                "fields": {
                    "method": method,
                    "code": exc.code.name,
                    "reason": error_reason_text(exc.reason),
                    "error": exc.message,
                }
            },
        )
        await abort(context, exc.code, exc.message, exc.reason, exc.metadata)
    # A bug: the traceback stays in the server log; the caller gets a reference.
    ref = uuid.uuid4().hex[:12]
    log.exception("rpc crashed", extra={"fields": {"method": method, "ref": ref}})
    await abort(
        context,
        grpc.StatusCode.INTERNAL,
        f"internal error (server log ref {ref})",
        common_pb2.ERROR_REASON_INTERNAL,
        {"ref": ref},
    )


class _Malformed:
    """Stands in for a request whose bytes did not parse."""

    def __init__(self, error: Exception):
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    # grpc answers UNKNOWN when a deserializer raises; we want INVALID_ARGUMENT,
    # so parse failures travel to the handler as a value instead.
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # protobuf DecodeError and friends
            return _Malformed(exc)

    return parse


async def _reject_malformed(request: Any, context: Context) -> None:
    if isinstance(request, _Malformed):
        await abort(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"malformed request: {request.error}",
            common_pb2.ERROR_REASON_MALFORMED_REQUEST,
        )


def _wrap_unary(fn: UnaryBehaviour, method: str) -> UnaryBehaviour:
    async def handler(request: Any, context: Context) -> Any:
        await _reject_malformed(request, context)
        try:
            return await fn(request, context)
        except aio.AbortError:
            raise
        except Exception as exc:
            await _abort_for(exc, method, context)

    return handler


def _wrap_stream(fn: WritingBehaviour, method: str) -> StreamBehaviour:
    async def handler(request: Any, context: Context) -> AsyncIterator[Any]:
        await _reject_malformed(request, context)
        try:
            result = fn(request, context)
            if isinstance(result, AsyncIterator):
                async for item in result:
                    yield item
            else:
                # Handlers that stream with context.write() are coroutines.
                await result
        except aio.AbortError:
            raise
        except Exception as exc:
            await _abort_for(exc, method, context)

    return handler


class DomainErrorInterceptor(aio.ServerInterceptor):
    """Maps DomainError subclasses to their gRPC status; the one place that does.

    Anything else is a bug: INTERNAL with a log reference, never a traceback
    or exception text on the wire.
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, MethodHandler] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> MethodHandler | None:
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        if handler.unary_unary:
            handler = grpc.unary_unary_rpc_method_handler(
                _wrap_unary(cast(UnaryBehaviour, handler.unary_unary), method),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        elif handler.unary_stream:
            handler = grpc.unary_stream_rpc_method_handler(
                _wrap_stream(cast(WritingBehaviour, handler.unary_stream), method),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        # Handlers are fixed per method once registered: wrap each once, not per call.
        self._wrapped[method] = handler
        return handler


class TokenAuthInterceptor(aio.ServerInterceptor):
    """Requires `authorization: Bearer <token>` on every RPC but health/reflection."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> MethodHandler | None:
        if handler_call_details.method.startswith(_OPEN_PREFIXES):
            return await continuation(handler_call_details)
        got = b""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                got = value.encode() if isinstance(value, str) else value
        if hmac.compare_digest(got, self._expected):
            return await continuation(handler_call_details)
        return _deny_handler(await continuation(handler_call_details))


async def _deny(context: aio.ServicerContext[Any, Any]) -> None:
    await abort(
        context,
        grpc.StatusCode.UNAUTHENTICATED,
        "missing or wrong bearer token",
        common_pb2.ERROR_REASON_UNAUTHENTICATED,
    )


def _deny_handler(handler: MethodHandler | None) -> MethodHandler:
    async def deny_unary(request: Any, context: Context) -> Any:
        await _deny(context)

    async def deny_stream(request: Any, context: Context) -> AsyncIterator[Any]:
        await _deny(context)
        yield  # pragma: no cover - makes this an async generator

    deser = handler.request_deserializer if handler else None
    ser = handler.response_serializer if handler else None
    if handler is not None and handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            deny_stream, request_deserializer=deser, response_serializer=ser
        )
    return grpc.unary_unary_rpc_method_handler(
        deny_unary, request_deserializer=deser, response_serializer=ser
    )
