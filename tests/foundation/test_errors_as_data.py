"""Errors as data, on real gRPC servers: every failure a service answers
carries a google.rpc.Status with an ErrorInfo (domain, reason, metadata), and
clients read why from it, never from the message."""

from __future__ import annotations

import grpc
import pytest
from grpc import aio

from speckit_reflex.bakeoff.readiness import wait_for_reflex_route
from speckit_reflex.cli.output import rpc_error
from speckit_reflex.clients.errors import error_of
from speckit_reflex.clients.router import RouterClient, refusal_reason
from speckit_reflex.contract import ERROR_DOMAIN, error_reason, error_reason_text
from speckit_reflex.errors import FailedPrecondition, InvalidArgument
from speckit_reflex.openai_gateway.errors import from_rpc
from speckit_reflex.runtime.interceptors import MESSAGE_MAX_BYTES
from speckit_reflex.runtime.server import create_server
from speckit_reflex.runtime.settings import RuntimeSettings
from speckit_reflex.v1 import common_pb2, router_pb2, router_pb2_grpc
from tests.ports import DeadEndpoint

REFUSED = common_pb2.ERROR_REASON_ROUTE_REFUSED


class _Answers(router_pb2_grpc.RouterServicer):
    """Decide fails as its session_id says: errors whose message and data disagree."""

    async def Decide(self, request, context):  # type: ignore[no-untyped-def]
        if request.session_id == "reworded":
            # A refusal whose message no longer starts with its reason.
            raise FailedPrecondition(
                "Das Budget ist aufgebraucht; try again tomorrow",
                reason=REFUSED,
                metadata={"routing_reason": "budget_exhausted", "decision_id": "d-1"},
            )
        if request.session_id == "lookalike":
            # Reads like a refusal, but the service did not say so.
            raise FailedPrecondition("budget_exhausted: some other precondition")
        if request.session_id == "field":
            raise InvalidArgument("that will not do", field="messages[3].content")
        if request.session_id == "long":
            raise FailedPrecondition(
                "budget – überschritten " * 2000,
                reason=REFUSED,
                metadata={"routing_reason": "budget_exhausted", "decision_id": "d" * 5000},
            )
        if request.session_id == "token_field":
            raise InvalidArgument("page_token: contains a NUL byte", field="page_token")
        if request.session_id.startswith("quote:"):
            # As servicers do: the refusal quotes the field it refuses.
            raise InvalidArgument(
                f"model {request.session_id!r} is not a model of the policy",
                field="model",
                metadata={"model": request.session_id},
            )
        if request.session_id == "crash":
            raise RuntimeError("a bug")
        return router_pb2.RoutingDecision(session_id=request.session_id)


class _Service:
    name = "router"
    service_names = ("speckit_reflex.v1.Router",)

    def register(self, server: aio.Server) -> None:
        router_pb2_grpc.add_RouterServicer_to_server(_Answers(), server)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


async def _failure(stub: router_pb2_grpc.RouterStub, session_id: str) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as info:
        await stub.Decide(router_pb2.DecideRequest(session_id=session_id))
    return info.value


async def test_clients_read_the_reason_and_never_the_message() -> None:
    running = await create_server(_Service(), "127.0.0.1:0", RuntimeSettings())
    try:
        async with aio.insecure_channel(running.address) as ch:
            stub = router_pb2_grpc.RouterStub(ch)

            reworded = await _failure(stub, "reworded")
            err = error_of(reworded)
            assert (err.code, err.reason, err.reason_text) == (
                grpc.StatusCode.FAILED_PRECONDITION,
                REFUSED,
                "ROUTE_REFUSED",
            )
            assert err.metadata == {"routing_reason": "budget_exhausted", "decision_id": "d-1"}
            assert err.message == "Das Budget ist aufgebraucht; try again tomorrow"
            assert refusal_reason(reworded) == "budget_exhausted"
            api = from_rpc("router", reworded)
            assert (api.status, api.type, api.code) == (
                429,
                "insufficient_quota",
                "budget_exhausted",
            )
            # The CLI's one line shows the reason and metadata beside the message.
            assert str(rpc_error("router", reworded, running.address)) == (
                "router: FAILED_PRECONDITION [ROUTE_REFUSED decision_id=d-1 "
                "routing_reason=budget_exhausted]: Das Budget ist aufgebraucht; try again tomorrow"
            )

            lookalike = await _failure(stub, "lookalike")
            err = error_of(lookalike)
            assert (err.reason, err.metadata) == (common_pb2.ERROR_REASON_FAILED_PRECONDITION, {})
            assert refusal_reason(lookalike) is None
            api = from_rpc("router", lookalike)
            assert (api.status, api.code) == (503, "failed_precondition")

            field = error_of(await _failure(stub, "field"))
            assert (field.code, field.reason, field.metadata) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                common_pb2.ERROR_REASON_INVALID_FIELD,
                {"field": "messages[3].content"},
            )
    finally:
        await running.stop(0)


async def test_a_long_message_still_arrives_with_its_reason() -> None:
    """The message travels twice in the trailers; unbounded, 46 KiB of it would
    exceed grpc's 16 KiB limit and the answer would be RESOURCE_EXHAUSTED."""
    running = await create_server(_Service(), "127.0.0.1:0", RuntimeSettings())
    try:
        async with aio.insecure_channel(running.address) as ch:
            err = error_of(await _failure(router_pb2_grpc.RouterStub(ch), "long"))
    finally:
        await running.stop(0)
    assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, REFUSED)
    assert err.metadata == {"routing_reason": "budget_exhausted", "decision_id": "d" * 256}
    assert err.message.startswith("budget – überschritten ") and err.message.endswith("…")
    assert len(err.message.encode()) <= MESSAGE_MAX_BYTES


async def test_a_refusal_quoting_a_secret_sends_it_redacted() -> None:
    """A refusal's message and metadata quote the request (or an upstream's
    reply, which may quote a key the caller never held): both leave through
    the redactor, as log lines do; the reason and field stay readable."""
    key = "sk-proj-" + "Q1w2E3r4T5y6U7i8O9p0" * 3
    running = await create_server(_Service(), "127.0.0.1:0", RuntimeSettings())
    try:
        async with aio.insecure_channel(running.address) as ch:
            raw = await _failure(router_pb2_grpc.RouterStub(ch), f"quote: Bearer {key}")
            named = error_of(await _failure(router_pb2_grpc.RouterStub(ch), "token_field"))
    finally:
        await running.stop(0)
    err = error_of(raw)
    assert err.reason == common_pb2.ERROR_REASON_INVALID_FIELD
    assert err.metadata["field"] == "model"
    trailers = b"".join(
        v if isinstance(v, bytes) else v.encode() for _, v in (raw.trailing_metadata() or ())
    )
    assert key not in (raw.details() or "") and key.encode() not in trailers
    assert key not in err.message and key not in err.metadata["model"]
    assert "REDACTED" in err.message and "REDACTED" in err.metadata["model"]
    # A refusal of a field named like a secret still says what is wrong with it.
    assert named.message == "page_token: contains a NUL byte"
    assert named.metadata == {"field": "page_token"}


async def test_malformed_crashed_and_unauthenticated_calls_carry_a_reason_too() -> None:
    running = await create_server(_Service(), "127.0.0.1:0", RuntimeSettings(auth_token="s3cret"))
    try:
        async with aio.insecure_channel(running.address) as ch:
            denied = error_of(await _failure(router_pb2_grpc.RouterStub(ch), "x"))
            assert (denied.code, denied.reason) == (
                grpc.StatusCode.UNAUTHENTICATED,
                common_pb2.ERROR_REASON_UNAUTHENTICATED,
            )
        auth = (("authorization", "Bearer s3cret"),)
        async with aio.insecure_channel(running.address) as ch:
            raw = ch.unary_unary("/speckit_reflex.v1.Router/Decide")
            with pytest.raises(aio.AioRpcError) as info:
                await raw(b"\xff\xff\xff\xff", metadata=auth)
            malformed = error_of(info.value)
            assert (malformed.code, malformed.reason) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                common_pb2.ERROR_REASON_MALFORMED_REQUEST,
            )
            with pytest.raises(aio.AioRpcError) as info:
                await router_pb2_grpc.RouterStub(ch).Decide(
                    router_pb2.DecideRequest(session_id="crash"), metadata=auth
                )
            crash = error_of(info.value)
            assert (crash.code, crash.reason) == (
                grpc.StatusCode.INTERNAL,
                common_pb2.ERROR_REASON_INTERNAL,
            )
            # The log reference is data too; the traceback stays in the server log.
            assert len(crash.metadata["ref"]) == 12 and crash.metadata["ref"] in crash.message
            assert "a bug" not in crash.message
    finally:
        await running.stop(0)


async def test_an_unreached_service_has_no_reason_and_is_no_refusal() -> None:
    with DeadEndpoint() as dead:
        async with aio.insecure_channel(dead.addr) as ch:
            with pytest.raises(aio.AioRpcError) as info:
                await RouterClient(ch).decide(session_id="s", timeout=5)
    err = error_of(info.value)
    assert err.code == grpc.StatusCode.UNAVAILABLE
    assert (err.reason, err.reason_text, err.metadata) == (
        common_pb2.ERROR_REASON_UNSPECIFIED,
        "",
        {},
    )
    assert refusal_reason(info.value) is None
    # The CLI says where it looked: no service answered there.
    line = str(rpc_error("router", info.value, "127.0.0.1:9"))
    assert line.startswith("router: UNAVAILABLE: ") and "is `speckit serve all` running?" in line
    # The bakeoff's readiness wait reports the outage as what it is, not as
    # "no reflex backend is routable".
    with DeadEndpoint() as dead:
        async with aio.insecure_channel(dead.addr) as ch:
            with pytest.raises(aio.AioRpcError) as info:
                await wait_for_reflex_route(RouterClient(ch), timeout_s=5, poll_s=0.1)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_every_reason_has_one_wire_name_and_back() -> None:
    values = common_pb2.ErrorReason.values()
    names = [error_reason_text(v) for v in values]
    assert len(set(names)) == len(names)
    assert all(n.isupper() and not n.startswith("ERROR_REASON") for n in names)
    assert [error_reason(n) for n in names] == list(values)
    assert error_reason("NOT_A_REASON_WE_KNOW") == common_pb2.ERROR_REASON_UNSPECIFIED
    assert ERROR_DOMAIN == "speckit-reflex"
