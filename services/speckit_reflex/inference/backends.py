"""HTTP to one model server: a pooled httpx client (aiohttp's transport
under the httpx API) plus its dialect.

`ModelServer` is the only code that opens connections to SGLang, vLLM,
llama.cpp or a cloud API. Failures that justify trying another backend are
raised as `UpstreamFailure` with a short reason code (recorded in events and
failovers); a request the server rejects as malformed is `InvalidArgument`.
Every wait is bounded by an absolute deadline (event-loop time), checked on
each read, so a server that stalls mid-stream cannot outlive the gRPC call.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from speckit_reflex.errors import InvalidArgument
from speckit_reflex.inference.dialects import Dialect, dialect_for
from speckit_reflex.runtime.redact import redact_text


class UpstreamFailure(Exception):
    """A backend failed in a way that justifies failover (and a cooldown)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class Generation:
    """What one streamed generation produced; filled while it streams."""

    parts: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    finish_reason: str = ""
    usage: dict[str, Any] | None = None
    timings: dict[str, Any] | None = None
    #: prompt tokens the server took from its prefix cache (None = unknown)
    cached_tokens: int | None = None
    model: str = ""
    #: perf_counter() of the first content delta (None until one arrives)
    first_token_at: float | None = None

    @property
    def content(self) -> str:
        return "".join(self.parts)

    @property
    def reasoning_text(self) -> str:
        return "".join(self.reasoning)


@dataclass(frozen=True)
class PrefixCache:
    """Cumulative prefix-cache counters of one server (since it started)."""

    queried_tokens: int
    hit_tokens: int


def _counter(text: str, name: str) -> float | None:
    """Sum of a Prometheus counter over its label sets (the exposition adds
    `_total` to counter names); None when absent."""
    pattern = re.compile(rf"^{re.escape(name)}(?:_total)?(?:\{{[^}}]*\}})?\s+(\S+)", re.MULTILINE)
    values = [float(v) for v in pattern.findall(text)]
    return sum(values) if values else None


def _status_reason(status: int) -> str:
    if status in (429, 503):
        return "overloaded"
    if status in (401, 403):
        return "auth_failed"
    if status == 404:
        return "model_not_listed"
    return f"http_{status}"


@dataclass(frozen=True)
class BackendSpec:
    """A backend as the adapter sees it: policy entry plus resolved secret."""

    name: str
    kind: str
    endpoint: str
    models: tuple[str, ...]
    api_key: str = ""
    is_cloud: bool = False


class ModelServer:
    """One OpenAI-compatible model server behind a keep-alive connection pool."""

    def __init__(self, spec: BackendSpec, *, max_connections: int = 64):
        self.spec = spec
        self.dialect: Dialect = dialect_for(spec.kind, spec.endpoint)
        headers = {"Authorization": f"Bearer {spec.api_key}"} if spec.api_key else {}
        base = spec.endpoint.rstrip("/")
        # /health_generate and /health live at the server root, not under /v1.
        self._root = base[: -len("/v1")] if base.endswith("/v1") else base
        # One connection pool per server, shared by the client (listing and
        # probes) and by generation, which goes to the transport directly:
        # the client's per-request layers (URL merging, auth and redirect
        # handling, cookie extraction) cost more than the rest of the adapter's
        # work on a small reply and do nothing for a POST to a fixed URL.
        # The transport is aiohttp's (httpx-aiohttp) under the same httpx API:
        # its C HTTP/1.1 parser costs about 0.3 ms of CPU per streamed request
        # where httpcore + h11 cost about 0.7 ms (docs/benchmarks.md).
        # Loopback model servers must never be sent through an env proxy.
        self._transport = AiohttpTransport(
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            trust_env=False,
        )
        self._client = httpx.AsyncClient(
            base_url=base + "/", headers=headers, transport=self._transport, trust_env=False
        )
        self._chat_url = httpx.URL(base + "/chat/completions")
        # The event stream is read raw, so it must come uncompressed.
        self._chat_headers = {
            **headers,
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            "Accept-Encoding": "identity",
        }

    @property
    def name(self) -> str:
        return self.spec.name

    async def close(self) -> None:
        await self._client.aclose()

    def _said(self, raw: bytes) -> str:
        """An error body's message, redacted of this server's key and every
        credential-shaped text: it reaches callers, who never hold the key."""
        secrets = (self.spec.api_key,) if self.spec.api_key else ()
        return redact_text(_error_text(self.dialect, raw), secrets)

    # -- listing and probing ------------------------------------------------

    async def list_models(self, timeout_s: float) -> list[dict[str, Any]]:
        """The model cards of GET /v1/models."""
        body = await self._get_json("models", timeout_s)
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise UpstreamFailure("bad_models_listing", "no data[] in /v1/models")
        return [c for c in data if isinstance(c, dict) and c.get("id")]

    async def probe_generation(self, model: str, timeout_s: float) -> None:
        """A real 1-token generation; raises UpstreamFailure when it fails."""
        if self.dialect.generation_probe_path:
            await self._request("GET", self._root + self.dialect.generation_probe_path, timeout_s)
            return
        body = self.dialect.chat_body(
            model, [{"role": "user", "content": "ping"}], 1, None, None, None, "", stream=False
        )
        reply = await self._request("POST", "chat/completions", timeout_s, json_body=body)
        if not isinstance(reply, dict) or not reply.get("choices"):
            raise UpstreamFailure("generation_probe_failed", "no choices in the probe reply")

    async def prefix_cache(self, timeout_s: float) -> PrefixCache | None:
        """The server's prefix-cache counters from its /metrics (None when its
        dialect names none, or the server does not expose them)."""
        names = self.dialect.prefix_cache_metrics
        if names is None:
            return None
        try:
            async with asyncio.timeout(timeout_s):
                resp = await self._client.get(self._root + "/metrics", timeout=timeout_s)
        except TimeoutError:
            raise UpstreamFailure("timeout", f"GET /metrics took over {timeout_s:.2f}s") from None
        except httpx.HTTPError as exc:
            raise _transport_failure(exc) from None
        if resp.status_code != 200:
            return None
        queried, hits = (_counter(resp.text, n) for n in names)
        if queried is None or hits is None:
            return None
        return PrefixCache(queried_tokens=int(queried), hit_tokens=int(hits))

    async def get_root_json(self, path: str, timeout_s: float) -> Any:
        """GET a native endpoint at the server root (/props, /get_model_info, /version)."""
        return await self._request("GET", self._root + path, timeout_s)

    async def _get_json(self, path: str, timeout_s: float) -> Any:
        return await self._request("GET", path, timeout_s)

    async def _request(self, method: str, url: str, timeout_s: float, json_body: Any = None) -> Any:
        try:
            async with asyncio.timeout(timeout_s):
                try:
                    resp = await self._client.request(
                        method, url, json=json_body, timeout=timeout_s
                    )
                except httpx.HTTPError as exc:
                    if not _stale_connection(exc):
                        raise
                    resp = await self._client.request(
                        method, url, json=json_body, timeout=timeout_s
                    )
        except TimeoutError:
            raise UpstreamFailure("timeout", f"{method} {url} took over {timeout_s:.2f}s") from None
        except httpx.HTTPError as exc:
            raise _transport_failure(exc) from None
        if resp.status_code != 200:
            raise UpstreamFailure(_status_reason(resp.status_code), self._said(resp.content))
        if not resp.content:
            return {}
        try:
            return json.loads(resp.content)
        except ValueError:
            return {}

    # -- generation ---------------------------------------------------------

    async def stream_chat(
        self, body: dict[str, Any], deadline: float, gen: Generation
    ) -> AsyncGenerator[str, None]:
        """POST a streaming chat completion; yield content deltas as they arrive.

        `gen` is filled as the stream goes (content, reasoning, usage, finish
        reason, time of the first content delta). `deadline` is event-loop
        time; every connect and read is bounded by it. Leaving the iteration
        early (cancellation, deadline) closes the upstream response.
        """
        loop = asyncio.get_running_loop()
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise UpstreamFailure("timeout", "no time left before the deadline")
        request = httpx.Request(
            "POST",
            self._chat_url,
            content=json.dumps(body).encode(),
            headers=self._chat_headers,
            extensions={"timeout": dict.fromkeys(("connect", "read", "write", "pool"), remaining)},
        )
        try:
            async with asyncio.timeout_at(deadline):
                try:
                    resp = await self._transport.handle_async_request(request)
                except httpx.HTTPError as exc:
                    if not _stale_connection(exc):
                        raise
                    resp = await self._transport.handle_async_request(request)
        except TimeoutError:
            raise UpstreamFailure("timeout", "no response headers before the deadline") from None
        except httpx.HTTPError as exc:
            raise _transport_failure(exc) from None
        resp.request = request
        try:
            if resp.status_code != 200:
                async with asyncio.timeout_at(deadline):
                    raw = await resp.aread()
                reason = _status_reason(resp.status_code)
                if resp.status_code in (400, 422):
                    raise InvalidArgument(f"{self.name} rejected the request: {self._said(raw)}")
                raise UpstreamFailure(reason, self._said(raw))
            if not resp.headers.get("content-type", "").startswith("text/event-stream"):
                # A server that ignored stream=true answered with one JSON body.
                async with asyncio.timeout_at(deadline):
                    raw = await resp.aread()
                for delta in self._read_whole(raw, gen):
                    yield delta
                return
            async for delta in self._read_events(resp, deadline, gen):
                yield delta
        except TimeoutError:
            raise UpstreamFailure("timeout", "the stream stalled past the deadline") from None
        except httpx.HTTPError as exc:
            raise _transport_failure(exc) from None
        finally:
            await resp.aclose()

    async def _read_events(
        self, resp: httpx.Response, deadline: float, gen: Generation
    ) -> AsyncIterator[str]:
        """Content deltas of an OpenAI-style event stream.

        The body is read in raw chunks (one deadline check per network read,
        not per line) and split into lines here; only `data:` lines matter.
        """
        chunks = resp.aiter_raw().__aiter__()
        pending = b""
        ended = False
        while not ended:
            async with asyncio.timeout_at(deadline):
                try:
                    raw = await chunks.__anext__()
                except StopAsyncIteration:
                    raw, ended = b"\n", True  # end of body: a last unterminated line counts too
            pending += raw
            if b"\n" not in raw:
                continue
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if not line.startswith(b"data:"):
                    continue  # blank separators, ":" comment pings, event:/id: fields
                data = line[5:].strip()
                if data == b"[DONE]":
                    if not ended:
                        # Read to the end of the body so the connection goes
                        # back to the keep-alive pool instead of being closed.
                        async with asyncio.timeout_at(deadline):
                            async for _ in chunks:
                                pass
                    return
                text = self._take_chunk(data, gen)
                if text:
                    yield text
        if not gen.finish_reason:
            raise UpstreamFailure(
                "truncated_stream", "the stream ended without a finish reason or [DONE]"
            )

    def _take_chunk(self, data: bytes, gen: Generation) -> str:
        """Record one stream chunk in `gen`; its content delta, if any."""
        try:
            chunk = json.loads(data)
        except ValueError:
            raise UpstreamFailure(
                "bad_stream", f"not JSON: {data[:120].decode(errors='replace')}"
            ) from None
        if "error" in chunk or chunk.get("object") == "error":
            raise UpstreamFailure("upstream_error", self.dialect.error_message(chunk))
        if chunk.get("usage") or chunk.get("timings"):
            # Last one wins: SGLang repeats usage on its finish chunk.
            gen.usage = chunk.get("usage") or gen.usage
            gen.timings = chunk.get("timings") or gen.timings
            gen.cached_tokens = self.dialect.cached_tokens(gen.usage, gen.timings)
        if not gen.model and chunk.get("model"):
            gen.model = chunk["model"]
        choices = chunk.get("choices")
        if not choices:
            return ""
        choice = choices[0]
        delta = choice.get("delta") or {}
        thought = self.dialect.reasoning_of(delta)
        if thought:
            gen.reasoning.append(thought)
        if choice.get("finish_reason"):
            gen.finish_reason = choice["finish_reason"]
        text: str = delta.get("content") or ""
        if not text:
            return ""
        if gen.first_token_at is None:
            gen.first_token_at = time.perf_counter()
        gen.parts.append(text)
        return text

    def _read_whole(self, raw: bytes, gen: Generation) -> list[str]:
        try:
            reply = json.loads(raw)
        except ValueError:
            raise UpstreamFailure("bad_reply", "neither an event stream nor JSON") from None
        if not isinstance(reply, dict) or "error" in reply or not reply.get("choices"):
            raise UpstreamFailure("upstream_error", self.dialect.error_message(reply))
        choice = reply["choices"][0]
        message = choice.get("message") or {}
        gen.usage = reply.get("usage") or None
        gen.timings = reply.get("timings") or None
        gen.cached_tokens = self.dialect.cached_tokens(gen.usage, gen.timings)
        gen.model = reply.get("model") or ""
        gen.finish_reason = choice.get("finish_reason") or ""
        thought = self.dialect.reasoning_of(message)
        if thought:
            gen.reasoning.append(thought)
        text = message.get("content") or ""
        if text:
            gen.first_token_at = time.perf_counter()
            gen.parts.append(text)
            return [text]
        return []


def _stale_connection(exc: httpx.HTTPError) -> bool:
    """A pooled keep-alive connection the server had already closed, found
    before any response byte: the request never reached the server, so it is
    sent once more on a new connection. llama.cpp's server closes the
    connection after each streamed reply, and uvicorn-based servers (SGLang,
    vLLM) close idle ones after 5 s, racing the pool's own expiry."""
    cause = exc.__cause__
    return isinstance(
        cause, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError
    ) and not isinstance(cause, aiohttp.ClientConnectorError)


def _transport_failure(exc: httpx.HTTPError) -> UpstreamFailure:
    # The aiohttp transport maps aiohttp's errors to httpx's coarsely (a
    # refused connection and a mid-stream disconnect both arrive as
    # ConnectTimeout); the aiohttp error it came from says what happened.
    cause = exc.__cause__
    if isinstance(cause, aiohttp.ClientError | TimeoutError):
        return _aiohttp_failure(cause)
    if isinstance(exc, httpx.ConnectTimeout):
        return UpstreamFailure("connect_timeout", str(exc) or type(exc).__name__)
    if isinstance(exc, httpx.ConnectError):
        return UpstreamFailure("connect_error", str(exc) or type(exc).__name__)
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamFailure("timeout", str(exc) or type(exc).__name__)
    if isinstance(exc, httpx.RemoteProtocolError):
        return UpstreamFailure("truncated_stream", str(exc) or type(exc).__name__)
    return UpstreamFailure("connection_error", str(exc) or type(exc).__name__)


def _aiohttp_failure(exc: aiohttp.ClientError | TimeoutError) -> UpstreamFailure:
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UpstreamFailure("connect_timeout", detail)
    if isinstance(exc, TimeoutError):  # aiohttp's timeout errors are TimeoutErrors too
        return UpstreamFailure("timeout", detail)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamFailure("connect_error", detail)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return UpstreamFailure("truncated_stream", detail)
    return UpstreamFailure("connection_error", detail)


def _error_text(dialect: Dialect, raw: bytes) -> str:
    try:
        return dialect.error_message(json.loads(raw))
    except ValueError:
        return raw[:300].decode(errors="replace")


def resolve_api_key(env_name: str | None, environ: Mapping[str, str]) -> str:
    """The API key named by the policy, read from the environment ("" if unset)."""
    return environ.get(env_name, "") if env_name else ""
