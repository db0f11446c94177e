"""Why a call failed, read as data: the google.rpc.ErrorInfo the services attach.

    try:
        await router.decide(...)
    except grpc.aio.AioRpcError as exc:
        err = error_of(exc)
        if err.reason == common_pb2.ERROR_REASON_ROUTE_REFUSED:
            print(err.metadata["routing_reason"])

The reasons and their metadata keys are the ErrorReason enum of
protos/speckit_reflex/v1/common.proto; its wire spelling is in
speckit_reflex.contract. The status message is for humans and
is never parsed here: a reworded message changes nothing a program sees.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
from google.rpc.error_details_pb2 import ErrorInfo
from google.rpc.status_pb2 import Status
from grpc_status import rpc_status

from speckit_reflex.contract import ERROR_DOMAIN, ErrorReason, error_reason
from speckit_reflex.v1 import common_pb2


@dataclass(frozen=True)
class RpcErrorInfo:
    """A failed call: its code, message, and ErrorInfo reason and metadata."""

    code: grpc.StatusCode
    message: str
    #: ERROR_REASON_UNSPECIFIED when the status carried no ErrorInfo of our
    #: domain (the service was never reached, a proxy answered) or a reason
    #: this client predates.
    reason: ErrorReason = common_pb2.ERROR_REASON_UNSPECIFIED
    #: ErrorInfo.reason as sent ("ROUTE_REFUSED"), "" when absent.
    reason_text: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)


def error_of(exc: grpc.RpcError) -> RpcErrorInfo:
    """The code, message, reason and metadata of a failed call (sync or aio)."""
    call = cast(Any, exc)
    code: grpc.StatusCode = call.code()
    message: str = call.details() or ""
    try:
        status: Status | None = rpc_status.from_call(call)
    except ValueError:
        # A Status whose code or message contradicts the call's: not ours to trust.
        status = None
    if status is not None:
        for detail in status.details:
            info = ErrorInfo()
            if detail.Unpack(info) and info.domain == ERROR_DOMAIN:
                return RpcErrorInfo(
                    code, message, error_reason(info.reason), info.reason, dict(info.metadata)
                )
    return RpcErrorInfo(code, message)


# Answers that say nothing about the request itself: the service down, slow,
# cancelled, not ours to call, or not that service at all.
_NOT_ABOUT_THE_REQUEST = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


def about_the_request(err: RpcErrorInfo) -> bool:
    """Whether a service answered this failure about the request it was sent
    (a refusal, a missing record, a bug on it), so that other requests may
    fare better: an ErrorInfo of our domain and a code that is not an outage."""
    return bool(err.reason_text) and err.code not in _NOT_ABOUT_THE_REQUEST
