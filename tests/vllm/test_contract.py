"""Contract tests: the adapter's wire traffic against SGLang's and vLLM's own
pydantic models (not against shapes written here).

Requests: every body the `sglang` and `vllm` dialects build (streamed and
unary, with and without a schema, with stream options) is captured as the
adapter sends it over HTTP and validated by the runtime's own
ChatCompletionRequest; a key the model has no field for fails too, because
both servers drop such keys without an error (a constraint under a wrong
name would be lost). Responses: each runtime's response models build the
bodies its server sends (serialised as its serving code does), a small HTTP
server replays them, and the adapter must read them right.

SGLang's models run in the project's environment (sglang installed with
--no-deps); vLLM's need torch and run in the vLLM environment (vllm_oracle.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from speckit_reflex.errors import InvalidArgument
from speckit_reflex.inference.backends import BackendSpec, Generation, ModelServer, UpstreamFailure
from speckit_reflex.inference.dialects import dialect_for
from tests.inference.fakes import FakeModelServer

from .wire_models import check_request, sglang_runtime, shapes

pytestmark = pytest.mark.contract

SCHEMA = {
    "type": "object",
    "properties": {"edits": {"type": "array", "items": {"type": "string"}}},
    "required": ["edits"],
    "additionalProperties": False,
}
MESSAGES = [
    {"role": "system", "content": "You fix Rust."},
    {"role": "user", "content": "fix it"},
    {"role": "assistant", "content": "{}"},
    {"role": "user", "content": "again, as JSON"},
]

# name -> (stream, max_tokens, temperature, seed, schema, schema_name)
CASES: dict[str, tuple[bool, int, float | None, int | None, dict[str, Any] | None, str]] = {
    "streamed": (True, 0, None, None, None, ""),
    "streamed_sampling": (True, 256, 0.2, 7, None, ""),
    "streamed_schema": (True, 512, 0.0, 1, SCHEMA, "patch"),
    "streamed_schema_unnamed": (True, 0, None, None, SCHEMA, ""),
    "unary": (False, 16, None, None, None, ""),
    "unary_schema": (False, 64, 0.0, None, SCHEMA, "patch"),
}
KINDS = ("sglang", "vllm")


async def _sent_bodies(kind: str) -> dict[str, dict[str, Any]]:
    """What the adapter puts on the wire for each case (plus its health probe),
    read back from the HTTP server that received it."""
    fake = await FakeModelServer(kind=kind, models=["m"]).start()
    server = ModelServer(BackendSpec("b", kind, fake.base_url, ("m",)))
    loop = asyncio.get_running_loop()
    try:
        names: list[str] = []
        for name, (stream, max_tokens, temperature, seed, schema, schema_name) in CASES.items():
            body = server.dialect.chat_body(
                "m", MESSAGES, max_tokens, temperature, seed, schema, schema_name, stream=stream
            )
            async for _ in server.stream_chat(body, loop.time() + 10, Generation()):
                pass
            names.append(name)
        await server.probe_generation("m", 10)
        posted = [
            b
            for method, path, b in fake.requests
            if method == "POST" and path == "/v1/chat/completions"
        ]
        if kind == "vllm":
            names.append("health_probe")  # SGLang's probe is GET /health_generate, no body
        assert len(posted) == len(names)
        return dict(zip(names, posted, strict=True))
    finally:
        await server.close()
        await fake.stop()


@pytest.fixture(scope="module")
def sglang():  # type: ignore[no-untyped-def]
    return sglang_runtime()


@pytest.fixture(scope="module")
def bodies() -> dict[str, dict[str, dict[str, Any]]]:
    return {kind: asyncio.run(_sent_bodies(kind)) for kind in KINDS}


def _body_ids() -> list[str]:
    return [*CASES, "health_probe"]


@pytest.mark.parametrize("case", list(CASES))
async def test_every_sglang_body_validates_against_sglangs_own_request_model(
    sglang, bodies, case: str
) -> None:
    body = bodies["sglang"][case]
    verdict = check_request(sglang, body)
    assert verdict == {"ok": True, "error": "", "ignored": []}, (body, verdict)
    if CASES[case][4] is not None:
        # The schema must reach SGLang's constraint, not just validate.
        req = sglang.request.model_validate(json.loads(json.dumps(body)))
        assert req.response_format.json_schema.schema_ == SCHEMA


@pytest.mark.vllm
@pytest.mark.parametrize("case", _body_ids())
async def test_every_vllm_body_validates_against_vllms_own_request_model(
    vllm_oracle, bodies, case: str
) -> None:
    body = bodies["vllm"][case]
    verdict = vllm_oracle.ask(op="request", body=body)
    assert verdict == {"ok": True, "error": "", "ignored": []}, (body, verdict)


@pytest.mark.vllm
async def test_where_the_servers_disagree_each_dialect_sends_what_its_server_accepts(
    sglang, vllm_oracle, bodies
) -> None:
    # stream_options without stream=true: SGLang accepts it, vLLM answers 400.
    unary = {**bodies["vllm"]["unary"], "stream_options": {"include_usage": True}}
    assert check_request(sglang, unary)["ok"]
    assert not vllm_oracle.ask(op="request", body=unary)["ok"]
    # type json_schema without its json_schema object: SGLang accepts, vLLM refuses.
    bare = {**bodies["vllm"]["streamed"], "response_format": {"type": "json_schema"}}
    assert check_request(sglang, bare)["ok"]
    assert not vllm_oracle.ask(op="request", body=bare)["ok"]
    # SGLang's separate_reasoning is not a vLLM field: vLLM would drop it.
    extra = vllm_oracle.ask(op="request", body=bodies["sglang"]["streamed"])
    assert extra["ignored"] == ["separate_reasoning"]
    # ...so the dialects send neither.
    for kind in KINDS:
        for name, body in bodies[kind].items():
            assert body["stream"] or "stream_options" not in body, (kind, name)
            rf = body.get("response_format")
            assert rf is None or rf["json_schema"]["schema"] == SCHEMA, (kind, name)
    assert all("separate_reasoning" not in b for b in bodies["vllm"].values())


# -- responses --------------------------------------------------------------------------


class Replay:
    """An HTTP server that answers with bodies built by a runtime's own models."""

    def __init__(self, shape: dict[str, Any]):
        self.shape = shape
        self.chat = "stream"  # "stream" | "whole" | "error" | "stream_error"
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def _models(self, _req: web.Request) -> web.Response:
        return web.Response(text=self.shape["models"], content_type="application/json")

    async def _completions(self, req: web.Request) -> web.StreamResponse:
        if self.chat == "error":
            return web.Response(
                status=400, text=self.shape["error"], content_type="application/json"
            )
        if self.chat == "whole":
            return web.Response(text=self.shape["whole"], content_type="application/json")
        events = (
            self.shape["stream"]
            if self.chat == "stream"
            else [self.shape["stream"][0], self.shape["stream_error"], "[DONE]"]
        )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(req)
        for data in events:
            await resp.write(f"data: {data}\n\n".encode())
        await resp.write_eof()
        return resp

    async def start(self) -> Replay:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._completions)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


PIECES = ['{"edits": ', '["a", ', '"b"]}']


def _shape(runtime: str, sglang, vllm_oracle, **kw: Any) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    args = {"model": "m", "pieces": PIECES, "prompt": 300, "completion": 3, "cached": 256, **kw}
    if runtime == "sglang":
        return shapes(sglang, **args)
    return vllm_oracle.ask(op="shapes", **args)


@pytest.fixture(params=KINDS)
def runtime(request: pytest.FixtureRequest) -> str:
    if request.param == "vllm":
        request.applymarker(pytest.mark.vllm)
    return str(request.param)


@pytest.fixture
def oracle_if_vllm(request: pytest.FixtureRequest, runtime: str):  # type: ignore[no-untyped-def]
    return request.getfixturevalue("vllm_oracle") if runtime == "vllm" else None


@pytest.fixture
async def replayed(runtime: str, sglang, oracle_if_vllm) -> AsyncIterator:  # type: ignore[no-untyped-def]
    servers: list[tuple[Replay, ModelServer]] = []

    async def start(**kw: Any) -> tuple[Replay, ModelServer]:
        replay = await Replay(_shape(runtime, sglang, oracle_if_vllm, **kw)).start()
        server = ModelServer(
            BackendSpec("b", runtime, f"http://127.0.0.1:{replay.port}/v1", ("m",))
        )
        servers.append((replay, server))
        return replay, server

    yield start
    for replay, server in servers:
        await server.close()
        await replay.stop()


async def _read(server: ModelServer) -> Generation:
    gen = Generation()
    body = server.dialect.chat_body("m", MESSAGES, 16, None, None, SCHEMA, "patch")
    async for _ in server.stream_chat(body, asyncio.get_running_loop().time() + 10, gen):
        pass
    return gen


async def test_streamed_reply_from_the_runtimes_own_chunk_models(replayed, runtime: str) -> None:
    _, server = await replayed()
    gen = await _read(server)
    assert gen.content == "".join(PIECES)
    assert gen.finish_reason == "stop" and gen.model == "m"
    assert (gen.usage or {})["prompt_tokens"] == 300 and gen.usage["completion_tokens"] == 3
    assert gen.cached_tokens == 256


async def test_whole_reply_listing_and_errors_from_the_runtimes_own_models(
    replayed, runtime: str
) -> None:
    replay, server = await replayed()
    replay.chat = "whole"
    gen = await _read(server)
    assert (gen.content, gen.finish_reason, gen.cached_tokens) == ("".join(PIECES), "stop", 256)
    cards = await server.list_models(5)
    assert [c["id"] for c in cards] == ["m"] and cards[0]["max_model_len"] == 2048
    replay.chat = "error"
    with pytest.raises(InvalidArgument, match="bad request from contract"):
        await _read(server)
    replay.chat = "stream_error"
    with pytest.raises(UpstreamFailure, match="bad request from contract") as failure:
        await _read(server)
    assert failure.value.reason == "upstream_error"


@pytest.mark.parametrize(
    ("prompt", "cached", "vllm_reads", "sglang_reads"),
    [
        (300, None, None, None),  # no details at all: unknown
        (300, 0, 0, 0),  # a prompt longer than a block that missed: a real 0
        (50, 0, None, 0),  # vLLM: shorter than one 128-token block, it can never hit
        (1023, 896, 896, 896),
    ],
)
async def test_cached_tokens_as_each_runtime_reports_them(
    replayed,
    runtime: str,
    prompt: int,
    cached: int | None,
    vllm_reads: int | None,
    sglang_reads: int | None,
) -> None:
    _, server = await replayed(prompt=prompt, cached=cached)
    gen = await _read(server)
    assert gen.cached_tokens == (vllm_reads if runtime == "vllm" else sglang_reads)


def test_the_captured_bodies_are_what_the_dialects_build(bodies) -> None:
    # Guards the capture itself: the HTTP round trip neither adds nor drops keys.
    for kind in KINDS:
        for name, (stream, max_tokens, temperature, seed, schema, schema_name) in CASES.items():
            built = dialect_for(kind).chat_body(
                "m", MESSAGES, max_tokens, temperature, seed, schema, schema_name, stream=stream
            )
            assert json.loads(json.dumps(built)) == bodies[kind][name]
