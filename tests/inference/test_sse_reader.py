"""The adapter's event-stream reader over real HTTP, with the body cut at
awkward places: inside a line, inside the `data:` prefix, between CR and LF.
Servers are free to chunk a stream anywhere; the deltas must not change."""

from __future__ import annotations

import asyncio
import json

import pytest

from speckit_reflex.inference.backends import BackendSpec, Generation, ModelServer, UpstreamFailure


def _sse(newline: bytes) -> bytes:
    def event(obj: object) -> bytes:
        return b"data: " + json.dumps(obj).encode() + newline + newline

    chunk = {"id": "c1", "object": "chat.completion.chunk", "model": "m"}
    body = b": ping" + newline + newline
    body += event(
        {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    )
    for piece in ('{"ok"', ": tr", "ue}"):
        body += event(
            {**chunk, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
        )
    body += event({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    body += event({**chunk, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}})
    return body + b"data: [DONE]" + newline + newline


async def _serve(
    body: bytes, cut_every: int, complete: bool = True
) -> tuple[asyncio.base_events.Server, str]:
    """An HTTP/1.1 server answering any POST with `body` in chunks of `cut_every` bytes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        await reader.readexactly(length)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        for i in range(0, len(body), cut_every):
            part = body[i : i + cut_every]
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
            await asyncio.sleep(0.001)  # separate reads on the client side
        if complete:
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/v1"


async def _read(url: str) -> tuple[list[str], Generation]:
    ms = ModelServer(BackendSpec("s", "vllm", url, ("m",)))
    gen = Generation()
    deltas: list[str] = []
    try:
        loop = asyncio.get_running_loop()
        async for d in ms.stream_chat(
            {"model": "m", "messages": [], "stream": True}, loop.time() + 5, gen
        ):
            deltas.append(d)
    finally:
        await ms.close()
    return deltas, gen


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"], ids=["lf", "crlf"])
@pytest.mark.parametrize("cut_every", [1, 3, 7, 64, 100_000])
async def test_deltas_survive_any_chunking(newline: bytes, cut_every: int) -> None:
    server, url = await _serve(_sse(newline), cut_every)
    async with server:
        deltas, gen = await _read(url)
    assert deltas == ['{"ok"', ": tr", "ue}"]
    assert gen.content == '{"ok": true}' and gen.finish_reason == "stop"
    assert gen.usage == {"prompt_tokens": 9, "completion_tokens": 3} and gen.model == "m"


async def test_body_ending_mid_stream_is_a_truncated_stream() -> None:
    body = _sse(b"\n")
    cut = body.index(b"ue}")  # the connection goes away in the middle of the third delta
    server, url = await _serve(body[:cut], 5, complete=False)
    async with server:
        with pytest.raises(UpstreamFailure) as err:
            await _read(url)
    assert err.value.reason == "truncated_stream"
