"""The HTTP side of the OpenAI-compatible endpoint, on aiohttp.web.

Why aiohttp: it is already a dependency (the adapter's HTTP transport), it
runs on the same asyncio loop as grpc.aio, so `serve all` hosts the endpoint
beside the four services and shares their channels, and its C HTTP parser
keeps the per-request cost low (the endpoint's added latency is benchmarked
against the LiteLLM proxy). No ASGI server or framework is added.

Routes: GET /v1/models, GET /v1/models/{id}, POST /v1/chat/completions
(unary, or SSE with `stream: true`). With SPECKIT_AUTH_TOKEN set every /v1
request needs `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from aiohttp import web

from speckit_reflex.clients.inference import InferenceClient
from speckit_reflex.clients.router import RouterClient
from speckit_reflex.contract import enum_name
from speckit_reflex.openai_gateway.core import Call, Gateway
from speckit_reflex.openai_gateway.errors import ApiError, from_rpc
from speckit_reflex.openai_gateway.request import ChatRequest, parse_chat_request
from speckit_reflex.runtime.listen import check_listen_address, split_address
from speckit_reflex.runtime.server import InsecureListenRefused, is_loopback
from speckit_reflex.v1 import common_pb2, inference_pb2

log = logging.getLogger("speckit.openai")

MAX_BODY_BYTES = 8 * 1024 * 1024
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(obj).encode(),
        status=status,
        headers=headers,
        content_type="application/json",
    )


def _error_response(err: ApiError) -> web.Response:
    return _json(err.body(), err.status)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes"}


def _route_headers(call: Call) -> dict[str, str]:
    """Where the request went and why, for clients that want to know."""
    d = call.decision
    headers = {
        "x-speckit-decision-id": d.decision_id,
        "x-speckit-route": f"{enum_name(common_pb2.RoutingMode, d.mode)}:{d.model}@{d.backend}",
        "x-speckit-reason": enum_name(common_pb2.RoutingReason, d.reason),
    }
    if d.verdict_waived:
        headers["x-speckit-verdict-waived"] = "true"
    return headers


def _usage(reply: inference_pb2.CompleteReply) -> dict[str, Any]:
    u = reply.usage
    usage: dict[str, Any] = {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    }
    if u.HasField("cached_tokens"):
        usage["prompt_tokens_details"] = {"cached_tokens": u.cached_tokens}
    return usage


def _checked_content(reply: inference_pb2.CompleteReply) -> str:
    """The reply's text; a schema-bound reply that never validated is an error,
    not an empty 200 (the adapter withholds invalid JSON when the policy
    requires a schema)."""
    if not reply.schema_valid and reply.validation_error and not reply.content:
        raise ApiError(
            502,
            f"the model's reply did not satisfy the JSON schema after {reply.attempts} "
            f"attempt(s): {reply.validation_error}",
            type="server_error",
            code="invalid_model_output",
        )
    return reply.content


class OpenAIEndpoint:
    """The aiohttp application over a Gateway."""

    def __init__(self, gateway: Gateway, *, token: str = ""):
        self._gateway = gateway
        self._token = token.encode()
        self.app = web.Application(
            client_max_size=MAX_BODY_BYTES, middlewares=[self._errors, self._auth]
        )
        self.app.router.add_get("/v1/models", self.list_models)
        self.app.router.add_get("/v1/models/{model:.+}", self.get_model)
        self.app.router.add_post("/v1/chat/completions", self.chat_completions)

    # -- middlewares -----------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as err:
            return _error_response(err)
        except web.HTTPRequestEntityTooLarge:
            return _error_response(
                ApiError(
                    413,
                    f"request body larger than {MAX_BODY_BYTES} bytes",
                    code="request_too_large",
                )
            )
        except web.HTTPException as exc:  # 404/405 of the router
            if exc.status < 400:
                raise
            return _error_response(ApiError(exc.status, exc.reason or "error", code=None))

    @web.middleware
    async def _auth(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        if self._token:
            given = request.headers.get("Authorization", "")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                value.strip().encode(), self._token
            ):
                raise ApiError(
                    401,
                    "missing or wrong API key: send Authorization: Bearer <SPECKIT_AUTH_TOKEN>",
                    code="invalid_api_key",
                )
        return await handler(request)

    # -- handlers --------------------------------------------------------------

    async def _models(self) -> list[dict[str, Any]]:
        try:
            return await self._gateway.models()
        except grpc.aio.AioRpcError as exc:
            raise from_rpc("router", exc) from None

    async def list_models(self, request: web.Request) -> web.Response:
        return _json({"object": "list", "data": await self._models()})

    async def get_model(self, request: web.Request) -> web.Response:
        wanted = request.match_info["model"]
        for m in await self._models():
            if m["id"] == wanted:
                return _json(m)
        raise ApiError(
            404, f"model {wanted[:256]!r} does not exist", param="model", code="model_not_found"
        )

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = json.loads(await request.read())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApiError(
                400, f"the request body is not valid JSON: {exc}", code="invalid_json"
            ) from None
        req = parse_chat_request(body)
        local_only = _truthy(request.headers.get("x-speckit-local-only"))
        try:
            call = await self._gateway.route(req, local_only=local_only)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc("router", exc) from None
        if req.stream:
            return await self._stream(request, call)
        try:
            reply = await self._gateway.complete(call)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc("inference", exc) from None
        content = _checked_content(reply)
        return _json(
            {
                "id": call.id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": reply.model or call.decision.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": reply.finish_reason or "stop",
                        "logprobs": None,
                    }
                ],
                "usage": _usage(reply),
                "system_fingerprint": call.decision.policy_hash[:16],
            },
            headers=_route_headers(call),
        )

    async def _stream(self, request: web.Request, call: Call) -> web.StreamResponse:
        """SSE in OpenAI's chat.completion.chunk shape.

        Nothing is sent until the first chunk arrives from the adapter, so a
        call that fails at once still gets a proper HTTP status. Under a JSON
        schema the adapter's deltas are provisional (a rejected attempt's
        text comes before the retry's), so only the validated reply is sent.
        """
        req: ChatRequest = call.request
        with_schema = bool(req.json_schema)
        chunks = self._gateway.stream(call)
        created = int(time.time())
        model = call.decision.model

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            doc = {
                "id": call.id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [
                    {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
                ],
            }
            return b"data: " + json.dumps(doc).encode() + b"\n\n"

        response: web.StreamResponse | None = None
        streamed = False  # whether any delta went out
        try:
            async for item in chunks:
                if item.WhichOneof("kind") == "delta":
                    if with_schema or not item.delta:
                        continue
                    payload = chunk({"content": item.delta})
                    streamed = True
                else:
                    final = item.final
                    content = _checked_content(final)
                    model = final.model or model
                    payload = (
                        chunk({"content": content}) if content and not streamed else b""
                    ) + chunk({}, final.finish_reason or "stop")
                    if req.include_usage:
                        usage = {
                            "id": call.id,
                            "object": "chat.completion.chunk",
                            "created": created,
                            "model": model,
                            "choices": [],
                            "usage": _usage(final),
                        }
                        payload += b"data: " + json.dumps(usage).encode() + b"\n\n"
                    payload += b"data: [DONE]\n\n"
                if response is None:
                    response = web.StreamResponse(
                        headers={
                            "Content-Type": "text/event-stream",
                            "Cache-Control": "no-cache",
                            **_route_headers(call),
                        }
                    )
                    await response.prepare(request)
                    payload = chunk({"role": "assistant", "content": ""}) + payload
                await response.write(payload)
        except grpc.aio.AioRpcError as exc:
            err = from_rpc("inference", exc)
            if response is None:
                raise err from None
            await response.write(b"data: " + json.dumps(err.body()).encode() + b"\n\n")
        except ApiError as err:
            if response is None:
                raise
            await response.write(b"data: " + json.dumps(err.body()).encode() + b"\n\n")
        except ConnectionResetError:  # the client went away; the finally cancels the model call
            log.info("client disconnected", extra={"fields": {"id": call.id}})
            return response or web.StreamResponse()
        finally:
            await chunks.aclose()
        if response is None:
            raise ApiError(
                502,
                "inference: the stream ended without a reply",
                type="server_error",
                code="no_reply",
            )
        await response.write_eof()
        return response


class OpenAIServer:
    """The endpoint listening on `addr`, started and stopped like the services."""

    name = "openai"

    def __init__(self, endpoint: OpenAIEndpoint, addr: str):
        self._endpoint = endpoint
        self._addr = addr
        self._runner: web.AppRunner | None = None
        self.address = ""

    async def start(self, grace_s: float = 10.0) -> str:
        host, port = split_address(self._addr)
        check_listen_address(self._addr, "openai")
        runner = web.AppRunner(
            self._endpoint.app, access_log=None, handle_signals=False, shutdown_timeout=grace_s
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, reuse_port=False).start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(f"openai: cannot listen on {self._addr}: {exc.strerror or exc}") from None
        self._runner = runner
        bound = runner.addresses[0]
        self.address = f"{self._addr.rpartition(':')[0]}:{bound[1]}"
        log.info(
            "serving",
            extra={
                "fields": {
                    "service": "openai",
                    "address": self.address,
                    "base_url": f"http://{self.address}/v1",
                }
            },
        )
        return self.address

    async def close(self) -> None:
        """Stop accepting; in-flight requests get the runner's shutdown_timeout."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def check_openai_exposure(addr: str, token: str, insecure: bool) -> None:
    """The services' rule for the HTTP endpoint: no token and reachable from
    elsewhere needs --insecure (it has no TLS of its own; put a proxy in front)."""
    if insecure or token or is_loopback(addr):
        return
    raise InsecureListenRefused(
        f"openai: refusing to listen on non-loopback {addr} without SPECKIT_AUTH_TOKEN; set it, "
        "or pass --insecure to serve unauthenticated"
    )


def build_server(
    router_channel: grpc.aio.Channel,
    inference_channel: grpc.aio.Channel,
    addr: str,
    token: str = "",
) -> OpenAIServer:
    gateway = Gateway(RouterClient(router_channel), InferenceClient(inference_channel))
    return OpenAIServer(OpenAIEndpoint(gateway, token=token), addr)
