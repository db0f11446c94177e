"""Domain errors. Each carries the gRPC status it maps to, a reason and metadata.

Cores raise these; one interceptor (runtime.interceptors) turns them into
statuses, so servicers never catch exceptions and a caller never sees UNKNOWN
for an expected failure.

Errors are data: besides the message (for humans, free to change) each error
has a `reason` from the ErrorReason enum of protos/speckit_reflex/v1/common.proto
and string `metadata` (the keys that enum documents per reason). The
interceptor sends them as a google.rpc.ErrorInfo inside a google.rpc.Status,
and clients branch on them (speckit_reflex.clients.errors), never on the text.
Each class has a generic reason named after its code; raise with a more
specific one where a caller can act on it.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc

from speckit_reflex.contract import ErrorReason
from speckit_reflex.v1 import common_pb2

_R = common_pb2.ErrorReason


class DomainError(Exception):
    """An expected failure a caller can act on."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    default_reason: ErrorReason = _R.ERROR_REASON_INTERNAL

    def __init__(
        self,
        message: str,
        *,
        reason: ErrorReason | None = None,
        metadata: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.reason: ErrorReason = self.default_reason if reason is None else reason
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidArgument(DomainError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = _R.ERROR_REASON_INVALID_ARGUMENT

    def __init__(
        self,
        message: str,
        *,
        field: str = "",
        reason: ErrorReason | None = None,
        metadata: Mapping[str, str] | None = None,
    ):
        """`field` names the offending field's path: the reason becomes
        INVALID_FIELD (unless given) and metadata["field"] the path."""
        if field:
            metadata = {"field": field, **(metadata or {})}
            reason = _R.ERROR_REASON_INVALID_FIELD if reason is None else reason
        super().__init__(message, reason=reason, metadata=metadata)
        self.field = field


class PermissionDenied(DomainError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = _R.ERROR_REASON_PERMISSION_DENIED


class NotFound(DomainError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = _R.ERROR_REASON_NOT_FOUND


class FailedPrecondition(DomainError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = _R.ERROR_REASON_FAILED_PRECONDITION


class Unavailable(DomainError):
    code = grpc.StatusCode.UNAVAILABLE
    default_reason = _R.ERROR_REASON_UNAVAILABLE


class DeadlineExceeded(DomainError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = _R.ERROR_REASON_DEADLINE_EXCEEDED


class ResourceExhausted(DomainError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = _R.ERROR_REASON_RESOURCE_EXHAUSTED


class Unauthenticated(DomainError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = _R.ERROR_REASON_UNAUTHENTICATED


class PolicyError(Exception):
    """A policy file that cannot be used. Stops the program; names key and file."""
