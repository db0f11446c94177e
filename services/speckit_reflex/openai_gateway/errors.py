"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}`
with the HTTP status OpenAI uses for the same situation, and the mapping from
the services' gRPC status codes to them."""

from __future__ import annotations

import grpc

from speckit_reflex.clients.errors import RpcErrorInfo, error_of
from speckit_reflex.v1 import common_pb2


class ApiError(Exception):
    """An error answered to the HTTP client."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def invalid(param: str, message: str) -> ApiError:
    """400 naming the offending field, as OpenAI does."""
    return ApiError(400, f"{param}: {message}", param=param, code="invalid_value")


# A refused route (Router ROUTE_REFUSED, or Inference refusing the cloud
# under local_only): why, and how an OpenAI client should read it.
_REFUSALS: dict[str, tuple[int, str]] = {
    "budget_exhausted": (429, "insufficient_quota"),
    "local_only_forbids_cloud": (403, "permission_error"),
}

# Status of a failed call by gRPC code (of either service).
_BY_CODE: dict[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.NOT_FOUND: (404, "invalid_request_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable"),
    grpc.StatusCode.FAILED_PRECONDITION: (503, "service_unavailable"),
}


def _refusal(err: RpcErrorInfo) -> str | None:
    """Why the call was refused by policy, from the ErrorInfo (never the message)."""
    if err.reason == common_pb2.ERROR_REASON_ROUTE_REFUSED:
        return err.metadata.get("routing_reason") or "route_refused"
    if err.reason == common_pb2.ERROR_REASON_LOCAL_ONLY_FORBIDS_CLOUD:
        return "local_only_forbids_cloud"
    return None


def from_rpc(service: str, exc: grpc.RpcError) -> ApiError:
    """The HTTP error for a failed Router or Inference call, by its ErrorInfo
    reason and metadata, then by its code; the message is only shown."""
    err = error_of(exc)
    code = err.code
    details = err.message or code.name
    reason = _refusal(err)
    if reason is not None:
        status, kind = _REFUSALS.get(reason, (503, "service_unavailable"))
        return ApiError(status, f"route refused: {details}", type=kind, code=reason)
    if service == "router" and err.metadata.get("field") == "model":
        not_known = err.reason == common_pb2.ERROR_REASON_UNKNOWN_MODEL
        return ApiError(
            404 if not_known else 400,
            details,
            param="model",
            code="model_not_found" if not_known else "invalid_value",
        )
    if code in (
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,
    ):
        # Our own wiring is wrong (token, address): not the HTTP client's fault.
        return ApiError(
            500, f"{service}: {code.name}: {details}", type="server_error", code="misconfigured"
        )
    status, kind = _BY_CODE.get(code, (502, "server_error"))
    return ApiError(status, f"{service}: {details}", type=kind, code=code.name.lower())
