"""Small real HTTP servers that answer like SGLang and vLLM, in their
documented response shapes (tests/vllm/ checks those against the servers'
own response models).

No GPU here, so SGLang and vLLM are reproduced at the wire level: the model
listing, streamed chat completions (with each runtime's chunk shapes, usage
placement and reasoning field), error bodies (flat for SGLang, nested for
vLLM), `/health` and SGLang's `/health_generate`, and the failure modes the
adapter must survive (overload, hangs, truncated or erroring streams).

It is a plain asyncio HTTP/1.1 server with keep-alive, listening on
127.0.0.1, and it counts connections: `open_connections` tells whether a
client left a request open. Also runnable as a process for the benchmarks:
`python tests/inference/fakes.py --kind vllm --port 0` prints its port.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

CHAT_MODES = (
    "ok",
    "overloaded",
    "hang",
    "hang_after_headers",
    "truncated",
    "midstream_error",
    "length",
)


@dataclass
class FakeModelServer:
    kind: str = "vllm"  # "sglang" | "vllm" | "openai"
    models: list[str] = field(default_factory=lambda: ["m"])
    reply: str = '{"ok": true}'
    #: replies for the next streamed chats, in order (then `reply` again)
    replies: list[str] = field(default_factory=list)
    reasoning: str = ""
    chat_mode: str = "ok"
    #: /health answers 200 but generation hangs (SGLang: /health_generate)
    probe_hangs: bool = False
    #: pieces the reply is streamed in, and the pause before each
    pieces: int = 3
    piece_delay_s: float = 0.0
    prompt_tokens: int = 12
    cached_tokens: int | None = None
    #: where the weights come from, as the server reports it ("" = the model id)
    weights: str = ""
    version: str = "0.9.2"
    port: int = 0
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    authorizations: list[str] = field(default_factory=list)
    connections_total: int = 0
    open_connections: int = 0
    #: requests whose response is not finished and whose client is still there
    open_requests: int = 0
    _server: asyncio.base_events.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def chats(self) -> list[dict[str, Any]]:
        """Bodies of the streamed chat-completion requests (not the 1-token probes)."""
        return [b for m, p, b in self.requests if p == "/v1/chat/completions" and b.get("stream")]

    async def start(self) -> FakeModelServer:
        # SO_REUSEPORT: `port` may be a port the test holds (tests/ports.HeldPort),
        # so that it stays dead after `stop()` instead of going to the next server.
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, reuse_port=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.transport.abort()
            await self._server.wait_closed()
            self._server = None

    # -- HTTP plumbing -------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_total += 1
        self.open_connections += 1
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {
                    k.strip().lower(): v.strip()
                    for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)
                }
                raw = await reader.readexactly(int(headers.get("content-length", "0")))
                body = json.loads(raw) if raw else None
                self.requests.append((method, path, body))
                self.authorizations.append(headers.get("authorization", ""))
                self.open_requests += 1
                try:
                    keep = await self._route(method, path, body, reader, writer)
                finally:
                    self.open_requests -= 1
                if not keep:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            self.open_connections -= 1
            self._writers.discard(writer)
            writer.close()

    @staticmethod
    async def _respond(
        writer: asyncio.StreamWriter, status: int, body: Any, reason: str = "OK"
    ) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        ctype = b"Content-Type: application/json\r\n" if body is not None else b""
        writer.write(
            b"HTTP/1.1 %d %s\r\n%sContent-Length: %d\r\n\r\n"
            % (status, reason.encode(), ctype, len(data))
            + data
        )
        await writer.drain()

    @staticmethod
    async def _wait_for_close(reader: asyncio.StreamReader) -> bool:
        """Hang until the client goes away; returns False (connection done)."""
        while await reader.read(65536):
            pass
        return False

    @staticmethod
    async def _pause(reader: asyncio.StreamReader, seconds: float) -> bool:
        """Sleep, noticing a client that closes meanwhile (returns False then)."""
        try:
            return bool(await asyncio.wait_for(reader.read(65536), seconds))
        except TimeoutError:
            return True

    async def _route(
        self,
        method: str,
        path: str,
        body: Any,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        if path == "/v1/models":
            owned = {"sglang": "sglang", "vllm": "vllm"}.get(self.kind, "system")
            cards = [
                {
                    "id": m,
                    "object": "model",
                    "created": 1,
                    "owned_by": owned,
                    "root": self.weights or m,
                    "parent": None,
                    "max_model_len": 4096,
                }
                for m in self.models
            ]
            await self._respond(writer, 200, {"object": "list", "data": cards})
            return True
        if path in ("/health", "/health_generate"):
            if path == "/health_generate" and self.probe_hangs:
                return await self._wait_for_close(reader)
            await self._respond(writer, 200, None)
            return True
        if path == "/get_model_info" and self.kind == "sglang":
            await self._respond(
                writer,
                200,
                {
                    "model_path": self.weights or self.models[0],
                    "tokenizer_path": None,
                    "is_generation": True,
                    "preferred_sampling_params": None,
                },
            )
            return True
        if path == "/version" and self.kind == "vllm":
            await self._respond(writer, 200, {"version": self.version})
            return True
        if path == "/v1/chat/completions":
            return await self._chat(body, reader, writer)
        await self._respond(
            writer,
            404,
            {"error": {"message": "not found", "type": "NotFoundError", "code": 404}},
            "Not Found",
        )
        return True

    # -- chat completions ----------------------------------------------------------

    def _error(self, status: int, message: str, type_: str) -> dict[str, Any]:
        if self.kind == "sglang":
            return {
                "object": "error",
                "message": message,
                "type": type_,
                "param": None,
                "code": status,
            }
        return {"error": {"message": message, "type": type_, "param": None, "code": status}}

    def _usage(self, completion: int) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }
        if self.kind == "sglang":
            # --enable-cache-report: null when nothing was cached.
            usage["prompt_tokens_details"] = (
                {"cached_tokens": self.cached_tokens} if self.cached_tokens else None
            )
            usage["reasoning_tokens"] = 0
        elif self.cached_tokens:
            # vLLM sets the field only when the count is truthy.
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        return usage

    def _split(self, text: str) -> list[str]:
        if not text:
            return []
        n = max(1, min(self.pieces, len(text)))
        step = -(-len(text) // n)
        return [text[i : i + step] for i in range(0, len(text), step)]

    async def _chat(
        self, body: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        model = body.get("model")
        if self.kind == "vllm" and model not in self.models:
            await self._respond(
                writer,
                404,
                self._error(404, f"The model `{model}` does not exist.", "NotFoundError"),
                "Not Found",
            )
            return True
        if not body.get("stream"):
            return await self._chat_whole(body, reader, writer)
        mode = self.chat_mode
        if mode == "overloaded":
            await self._respond(
                writer,
                503,
                self._error(503, "The request queue is full.", "ServiceUnavailable"),
                "Service Unavailable",
            )
            return True
        if mode == "rejects_echoing_auth":
            # Some upstreams (and proxies) quote the request back in a 400, credentials too.
            said = f"invalid request (authorization: {self.authorizations[-1]})"
            await self._respond(
                writer, 400, self._error(400, said, "BadRequestError"), "Bad Request"
            )
            return True
        if mode == "hang":
            return await self._wait_for_close(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        await writer.drain()
        if mode == "hang_after_headers":
            return await self._wait_for_close(reader)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        reply = self.replies.pop(0) if self.replies else self.reply
        for event in self._events(model, include_usage, reply):
            if event is None:  # truncated: drop the connection mid-stream
                writer.transport.abort()
                return False
            if event == "pause":
                if self.piece_delay_s and not await self._pause(reader, self.piece_delay_s):
                    return False  # the client went away mid-stream
                continue
            data = event.encode()
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    def _events(self, model: str, include_usage: bool, reply: str) -> list[str | None]:
        cid = f"chatcmpl-{time.monotonic_ns()}"
        sg = self.kind == "sglang"

        def chunk(
            delta: dict[str, Any],
            finish: str | None = None,
            usage: Any = None,
            choices: bool = True,
        ) -> str:
            obj: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": 1,
                "model": model,
            }
            if choices:
                choice: dict[str, Any] = {
                    "index": 0,
                    "delta": delta,
                    "finish_reason": finish,
                    "logprobs": None,
                }
                if sg:
                    choice["matched_stop"] = None
                    delta.setdefault("reasoning_content", None)
                    delta.setdefault("tool_calls", None)
                obj["choices"] = [choice]
            else:
                obj["choices"] = []
            if usage is not None or sg:
                obj["usage"] = usage
            return f"data: {json.dumps(obj)}\n\n"

        events: list[str | None] = [": ping\n\n", chunk({"role": "assistant", "content": ""})]
        field_name = "reasoning_content" if sg else "reasoning"
        for piece in self._split(self.reasoning):
            events += ["pause", chunk({field_name: piece})]
        pieces = self._split(reply)
        finish = "length" if self.chat_mode == "length" else "stop"
        for i, piece in enumerate(pieces):
            events.append("pause")
            if self.chat_mode == "truncated" and i == len(pieces) // 2:
                events.append(None)
                return events
            if self.chat_mode == "midstream_error" and i == 1:
                events.append(
                    f"data: {json.dumps({'error': self._error(500, 'CUDA out of memory', 'InternalServerError')})}\n\n"
                )
                events.append("data: [DONE]\n\n")
                return events
            last = i == len(pieces) - 1
            events.append(chunk({"content": piece}, finish if (last and not sg) else None))
        n = len(pieces) + len(self._split(self.reasoning))
        if sg:
            # SGLang: a separate finish chunk that carries usage even without include_usage.
            events.append(chunk({"content": None}, finish, usage=self._usage(n)))
        if include_usage:
            events.append(chunk({}, usage=self._usage(n), choices=False))
        events.append("data: [DONE]\n\n")
        return events

    async def _chat_whole(
        self, body: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        if self.probe_hangs:
            return await self._wait_for_close(reader)
        if self.chat_mode == "overloaded":
            await self._respond(
                writer,
                503,
                self._error(503, "The request queue is full.", "ServiceUnavailable"),
                "Service Unavailable",
            )
            return True
        message = {"role": "assistant", "content": self.reply[:1]}
        await self._respond(
            writer,
            200,
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1,
                "model": body.get("model"),
                "choices": [
                    {"index": 0, "message": message, "finish_reason": "length", "logprobs": None}
                ],
                "usage": self._usage(1),
            },
        )
        return True


async def _main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", default="vllm", choices=["sglang", "vllm", "openai"])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--model", default="m")
    ap.add_argument("--reply", default='{"ok": true}')
    ap.add_argument("--pieces", type=int, default=3)
    ap.add_argument("--piece-delay-ms", type=float, default=0.0)
    a = ap.parse_args()
    fake = await FakeModelServer(
        kind=a.kind,
        port=a.port,
        models=[a.model],
        reply=a.reply,
        pieces=a.pieces,
        piece_delay_s=a.piece_delay_ms / 1000,
    ).start()
    print(fake.port, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_main())
