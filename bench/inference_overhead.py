"""Benchmark: what the Inference Adapter adds on top of calling a model server directly.

Side by side in one run, against the same fast local stub server (a
vLLM-shaped OpenAI-compatible server from tests/inference/fakes.py, in its
own process):

* unary: `Inference.Complete` over gRPC (with a small JSON schema, validated
  by the adapter) vs the same streamed chat completion sent directly with a
  pooled httpx client (body encoded once, reply read whole and not parsed:
  the cheapest direct call, so "added" is an upper bound); sequential, small
  replies. Added latency = adapter percentile minus direct percentile.
* the reflex path: `Router.Decide` (a `speckit serve router` process whose
  caches read this adapter's health and passing verdicts) and then
  `Inference.Complete` of the model it chose, against the same direct call.
  The three unary sides take turns, the side going first rotating from call
  to call, so that machine noise hits every side alike.
* streaming: `Inference.StreamComplete` vs direct streaming, with stubs that
  pause before every token: TTFT over many short streams (--ttft-calls), and
  output tokens/s over fewer long ones (--stream-calls). The side that goes
  first alternates from call to call.
* optionally LiteLLM proxy in front of the same stub (when a LiteLLM is found
  at $LITELLM_BIN or /tmp/litellm-venv/bin/litellm; skipped otherwise).

The adapter runs as its own process (`speckit serve inference`), sending its
LLMCall events to a small counting Capsule in a process of its own. Everything
listens on 127.0.0.1; the run is bounded in count and time.

    .venv/bin/python bench/inference_overhead.py [--calls 2000] [--ttft-calls 300] [--stream-calls 60] [--seconds 60]

Prints a table with each target and writes bench/results/inference_overhead.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from grpc import aio

from speckit_reflex.clients.inference import InferenceClient
from speckit_reflex.clients.ports import pick_port
from speckit_reflex.clients.router import RouterClient
from speckit_reflex.contract import percentile
from speckit_reflex.v1 import capsule_pb2, capsule_pb2_grpc, common_pb2

ROOT = Path(__file__).resolve().parents[1]

SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
    "additionalProperties": False,
}
MESSAGES = [("system", "Reply in JSON."), ("user", "Is it ok?")]
TARGETS = {
    "added_p50_ms": 1.0,
    "added_p99_ms": 4.0,
    "stream_ttft_added_p50_ms": 1.0,
    "stream_tps_ratio": 0.98,
    "reflex_added_p50_ms": 1.5,
    "reflex_added_p99_ms": 5.0,
}


class CountingCapsule(capsule_pb2_grpc.CapsuleServicer):
    """Takes the services' events; tells the Router every model passes its bakeoff."""

    def __init__(self) -> None:
        self.llm_calls = 0
        self.decisions = 0

    async def CheckThresholds(self, request, context):  # type: ignore[no-untyped-def]
        return capsule_pb2.CheckThresholdsReply(passed=True, model=request.model)

    async def GetUsage(self, request, context):  # type: ignore[no-untyped-def]
        return capsule_pb2.UsageSummary()

    async def AppendEvents(self, request, context):  # type: ignore[no-untyped-def]
        for e in request.events:
            if e.type == common_pb2.EVENT_TYPE_LLM_CALL:
                self.llm_calls += 1
            elif e.type == common_pb2.EVENT_TYPE_ROUTING_DECISION:
                self.decisions += 1
        return capsule_pb2.AppendEventsReply(inserted=len(request.events))


def start_stub(pieces: int, delay_ms: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests/inference/fakes.py"),
            "--kind",
            "vllm",
            "--reply",
            '{"ok": true}',
            "--pieces",
            str(pieces),
            "--piece-delay-ms",
            str(delay_ms),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, f"http://127.0.0.1:{port}/v1"


def write_policy(workdir: Path, unary_url: str, stream_url: str, ttft_url: str) -> Path:
    """One policy for the adapter and the Router: model m on three stubs."""
    policy = workdir / "model_policy.toml"
    policy.write_text(f"""
[routing.reflex]
enabled = true
model = "m"
timeout_ms = 10000

[[routing.reflex.backends]]
name = "stub"
kind = "vllm"
endpoint = "{unary_url}"

[[routing.reflex.backends]]
name = "paced"
kind = "vllm"
endpoint = "{stream_url}"

[[routing.reflex.backends]]
name = "ttft"
kind = "vllm"
endpoint = "{ttft_url}"

[routing.health]
probe_interval_s = 60
# Fresh for the whole run: a route must not turn to (refused) cloud because
# a loaded machine made a phase outlast the default 30 s.
stale_after_s = 600

[privacy]
local_only = true
""")
    return policy


def start_service(
    name: str, workdir: Path, policy: Path, inference_addr: str, capsule_addr: str
) -> tuple[subprocess.Popen[bytes], str]:
    """`speckit serve <name>` on a free port, its peers at the given addresses."""
    addr = inference_addr if name == "inference" else f"127.0.0.1:{pick_port()}"
    env = {
        **os.environ,
        f"SPECKIT_{name.upper()}_ADDR": addr,
        "SPECKIT_INFERENCE_ADDR": inference_addr,
        "SPECKIT_CAPSULE_ADDR": capsule_addr,
        "SPECKIT_POLICY": str(policy),
        "SPECKIT_HOME": str(workdir),
        "SPECKIT_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "speckit_reflex.cli.main", "serve", name],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, addr


def start_litellm(workdir: Path, stub_url: str) -> tuple[subprocess.Popen[bytes] | None, str, str]:
    binary = os.environ.get("LITELLM_BIN") or "/tmp/litellm-venv/bin/litellm"
    if not Path(binary).exists():
        return None, "", ""
    # The proxy refuses to start without a master key; a throwaway one per run.
    key = "sk-bench-" + os.urandom(16).hex()
    cfg = workdir / "litellm.yaml"
    cfg.write_text(f"""model_list:
  - model_name: m
    litellm_params:
      model: openai/m
      api_base: {stub_url}
      api_key: none
""")
    port = pick_port()
    proc = subprocess.Popen(
        [
            binary,
            "--config",
            str(cfg),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
        ],
        env={**os.environ, "LITELLM_MASTER_KEY": key},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return proc, f"http://127.0.0.1:{port}/v1", key


async def wait_ready(check, timeout_s: float) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            await check()
            return
        except Exception:
            await asyncio.sleep(0.2)
    raise RuntimeError("service did not become ready")


def chat_body(schema: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "m",
        "messages": [{"role": r, "content": c} for r, c in MESSAGES],
        "max_tokens": 16,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if schema is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "reply", "schema": schema, "strict": True},
        }
    return body


async def direct_stream(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], key: str = ""
) -> tuple[float, float | None, list[float]]:
    """(latency_s, ttft_s, delta times) of one streamed completion sent directly."""
    t0 = time.perf_counter()
    ttft = None
    stamps: list[float] = []
    headers = {"Authorization": f"Bearer {key}"} if key else None
    async with client.stream("POST", url + "/chat/completions", json=body, headers=headers) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            for choice in chunk.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    now = time.perf_counter()
                    stamps.append(now)
                    if ttft is None:
                        ttft = now - t0
    return time.perf_counter() - t0, ttft, stamps


async def direct_whole(client: httpx.AsyncClient, url: str, body: bytes) -> None:
    """The cheapest direct call: a pre-encoded body, the streamed reply read whole, unparsed.

    A lower bound for any real client (which must at least parse the reply),
    so the adapter's added latency measured against it is an upper bound.
    """
    resp = await client.post(
        url + "/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    resp.raise_for_status()
    if not resp.content.rstrip().endswith(b"data: [DONE]"):
        raise RuntimeError(f"incomplete stream from the stub: {resp.content[-80:]!r}")


async def post_whole(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], key: str = ""
) -> dict[str, Any]:
    """A unary chat completion (stream false), its JSON reply parsed, as a client reads it."""
    headers = {"Authorization": f"Bearer {key}"} if key else None
    resp = await client.post(url + "/chat/completions", json=body, headers=headers)
    resp.raise_for_status()
    reply: dict[str, Any] = resp.json()
    if not reply.get("choices"):
        raise RuntimeError(f"no choices in {reply}")
    return reply


def start_endpoint(
    workdir: Path, router_addr: str, adapter_addr: str, capsule_addr: str
) -> tuple[subprocess.Popen[bytes], str]:
    """`speckit serve openai` in its own process, a client of this run's Router and adapter."""
    addr = f"127.0.0.1:{pick_port()}"
    env = {
        **os.environ,
        "SPECKIT_OPENAI_ADDR": addr,
        "SPECKIT_ROUTER_ADDR": router_addr,
        "SPECKIT_INFERENCE_ADDR": adapter_addr,
        "SPECKIT_CAPSULE_ADDR": capsule_addr,
        "SPECKIT_HOME": str(workdir),
        "SPECKIT_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "speckit_reflex.cli.main", "serve", "openai"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, f"http://{addr}/v1"


def start_serve_all(workdir: Path, policy: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`speckit serve all --mode reflex` with the endpoint in the same process
    (SPECKIT_OPENAI_ADDR), its own Capsule on SQLite: the deployment the README
    shows. --mode reflex, since this Capsule has no passing bakeoff."""
    addr = f"127.0.0.1:{pick_port()}"
    env = {
        **os.environ,
        "SPECKIT_OPENAI_ADDR": addr,
        "SPECKIT_POLICY": str(policy),
        "SPECKIT_HOME": str(workdir / "all"),
        "SPECKIT_LOG_LEVEL": "ERROR",
        **{
            f"SPECKIT_{name}_ADDR": f"127.0.0.1:{pick_port()}"
            for name in ("ROUTER", "INFERENCE", "PATCHLOOP", "CAPSULE")
        },
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "speckit_reflex.cli.main", "serve", "all", "--mode", "reflex"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, f"http://{addr}/v1"


def stop_process(proc: subprocess.Popen[Any]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def added(samples: list[float], base: list[float]) -> float | None:
    return statistics.median(samples) - statistics.median(base) if samples and base else None


async def front_ends(
    args: argparse.Namespace,
    workdir: Path,
    http: httpx.AsyncClient,
    stub_url: str,
    router_addr: str,
    adapter_addr: str,
    capsule_addr: str,
    policy: Path,
) -> dict[str, Any]:
    """Added latency of the OpenAI endpoint and of LiteLLM over direct calls to the stub.

    Unary: a chat completion with stream false, reply parsed. Streaming: TTFT
    (first content delta) and the whole stream's latency. Each iteration runs
    every side once per kind, the side going first rotating.
    """
    endpoint_proc, endpoint_url = start_endpoint(workdir, router_addr, adapter_addr, capsule_addr)
    all_proc, all_url = start_serve_all(workdir, policy)
    litellm_proc, litellm_url, litellm_key = (None, "", "")
    if not args.no_litellm:
        litellm_proc, litellm_url, litellm_key = start_litellm(workdir, stub_url)
    plain = {"messages": [{"role": r, "content": c} for r, c in MESSAGES], "max_tokens": 16}
    unary = {**plain, "stream": False}
    stream = {**plain, "stream": True, "stream_options": {"include_usage": True}}
    # side name -> (url, model, key)
    sides: dict[str, tuple[str, str, str]] = {
        "direct": (stub_url, "m", ""),
        "endpoint": (endpoint_url, "speckit/auto", ""),
    }
    # Requests the endpoint answered, each one model call (for the event count).
    answered = 0

    async def endpoint_ready() -> None:
        nonlocal answered
        await post_whole(http, endpoint_url, {**unary, "model": "speckit/auto"})
        answered += 1

    try:
        await wait_ready(endpoint_ready, 60)
        await wait_ready(lambda: post_whole(http, all_url, {**unary, "model": "speckit/auto"}), 60)
        sides["endpoint_in_serve_all"] = (all_url, "speckit/auto", "")
        if litellm_proc:
            try:
                await wait_ready(
                    lambda: post_whole(http, litellm_url, {**unary, "model": "m"}, litellm_key), 120
                )
                sides["litellm"] = (litellm_url, "m", litellm_key)
            except RuntimeError:
                pass
        names = list(sides)
        unary_ms: dict[str, list[float]] = {n: [] for n in names}
        ttft_ms: dict[str, list[float]] = {n: [] for n in names}
        stream_ms: dict[str, list[float]] = {n: [] for n in names}
        warmup = args.warmup // 4
        phase_end = time.monotonic() + args.seconds
        for i in range(warmup + args.frontend_calls):
            if time.monotonic() > phase_end:
                break
            for k in range(len(names)):
                name = names[(i + k) % len(names)]
                url, model, key = sides[name]
                t0 = time.perf_counter()
                await post_whole(http, url, {**unary, "model": model}, key)
                answered += name == "endpoint"
                if i >= warmup:
                    unary_ms[name].append((time.perf_counter() - t0) * 1000)
            for k in range(len(names)):
                name = names[(i + k) % len(names)]
                url, model, key = sides[name]
                latency, ttft, _ = await direct_stream(http, url, {**stream, "model": model}, key)
                answered += name == "endpoint"
                if i >= warmup and ttft is not None:
                    ttft_ms[name].append(ttft * 1000)
                    stream_ms[name].append(latency * 1000)
    finally:
        stop_process(endpoint_proc)
        stop_process(all_proc)
        if litellm_proc:
            stop_process(litellm_proc)
    out: dict[str, Any] = {
        "frontend_calls": len(unary_ms["direct"]),
        "endpoint_requests": answered,
        "frontend_direct_unary_p50_ms": statistics.median(unary_ms["direct"])
        if unary_ms["direct"]
        else None,
        "frontend_direct_ttft_p50_ms": statistics.median(ttft_ms["direct"])
        if ttft_ms["direct"]
        else None,
        "endpoint_unary_added_p50_ms": added(unary_ms["endpoint"], unary_ms["direct"]),
        "endpoint_ttft_added_p50_ms": added(ttft_ms["endpoint"], ttft_ms["direct"]),
        "endpoint_stream_added_p50_ms": added(stream_ms["endpoint"], stream_ms["direct"]),
        "serve_all_unary_added_p50_ms": added(
            unary_ms["endpoint_in_serve_all"], unary_ms["direct"]
        ),
        "serve_all_ttft_added_p50_ms": added(ttft_ms["endpoint_in_serve_all"], ttft_ms["direct"]),
        "litellm_calls": len(unary_ms.get("litellm", [])),
        "litellm_unary_added_p50_ms": added(unary_ms.get("litellm", []), unary_ms["direct"]),
        "litellm_ttft_added_p50_ms": added(ttft_ms.get("litellm", []), ttft_ms["direct"]),
        # The whole streamed request, as the earlier runs measured LiteLLM.
        "litellm_added_p50_ms": added(stream_ms.get("litellm", []), stream_ms["direct"]),
    }
    for kind in ("unary", "ttft"):
        theirs = out[f"litellm_{kind}_added_p50_ms"]
        for side in ("endpoint", "serve_all"):
            ours = out[f"{side}_{kind}_added_p50_ms"]
            out[f"{side}_vs_litellm_{kind}_ratio"] = (
                ours / theirs if ours is not None and theirs else None
            )
    return out


def tokens_per_s(stamps: list[float]) -> float:
    return (
        (len(stamps) - 1) / (stamps[-1] - stamps[0])
        if len(stamps) > 1 and stamps[-1] > stamps[0]
        else 0.0
    )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-inference-"))
    procs: list[subprocess.Popen[Any]] = []
    # The Capsule taking the services' events runs in its own process, so its
    # gRPC server does not share this (measuring) process.
    capsule_port = pick_port()
    capsule_proc = await asyncio.to_thread(
        subprocess.Popen,
        [sys.executable, __file__, "--serve-capsule", str(capsule_port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert capsule_proc.stdout is not None
    assert (await asyncio.to_thread(capsule_proc.stdout.readline)).strip() == "ready"
    llm_call_events = decision_events = 0
    try:
        unary_stub, unary_url = start_stub(pieces=3, delay_ms=0)
        paced_stub, paced_url = start_stub(pieces=args.stream_tokens, delay_ms=args.token_delay_ms)
        ttft_stub, ttft_url = start_stub(pieces=4, delay_ms=args.token_delay_ms)
        procs += [unary_stub, paced_stub, ttft_stub]
        policy = write_policy(workdir, unary_url, paced_url, ttft_url)
        capsule_addr = f"127.0.0.1:{capsule_port}"
        adapter_proc, adapter_addr = start_service(
            "inference", workdir, policy, f"127.0.0.1:{pick_port()}", capsule_addr
        )
        procs.append(adapter_proc)

        channel = aio.insecure_channel(adapter_addr)
        llm = InferenceClient(channel)
        http = httpx.AsyncClient(trust_env=False, timeout=30)
        await wait_ready(lambda: llm.health("stub", timeout=2), 60)
        # The Router starts once the adapter answers, so its first health
        # refresh already sees the stubs healthy.
        router_proc, router_addr = start_service(
            "router", workdir, policy, adapter_addr, capsule_addr
        )
        procs.append(router_proc)
        router_channel = aio.insecure_channel(router_addr)
        router = RouterClient(router_channel)
        decide = {
            "stage": common_pb2.STAGE_IMPLEMENT,
            "role": common_pb2.ROLE_IMPLEMENTER,
            "session_id": "bench",
            "attempt": 1,
        }

        async def reflex_ready() -> None:
            d = await router.decide(timeout=2, **decide)
            if d.mode != common_pb2.ROUTING_MODE_REFLEX:
                raise RuntimeError(d.detail)

        await wait_ready(reflex_ready, 60)
        deadline = time.monotonic() + args.seconds

        # -- unary --------------------------------------------------------------
        body = chat_body(SCHEMA)
        direct: list[float] = []
        adapter: list[float] = []
        reflex: list[float] = []

        body_bytes = json.dumps(body).encode()

        async def via_direct() -> None:
            await direct_whole(http, unary_url, body_bytes)

        async def via_adapter() -> None:
            reply = await llm.complete(
                MESSAGES, json_schema=SCHEMA, backend="stub", max_tokens=16, timeout=10
            )
            assert reply.schema_valid, reply.validation_error

        async def via_reflex_path() -> None:
            # As PatchLoop takes it: Decide, then Complete naming the chosen
            # model (the adapter picks its backend).
            d = await router.decide(timeout=2, **decide)
            assert d.mode == common_pb2.ROUTING_MODE_REFLEX, d.detail
            reply = await llm.complete(
                MESSAGES,
                json_schema=SCHEMA,
                model=d.model,
                max_tokens=16,
                timeout=10,
                decision_id=d.decision_id,
                session_id="bench",
                attempt=1,
            )
            assert reply.schema_valid and reply.backend == "stub", (
                reply.backend,
                reply.validation_error,
            )

        sides = [(via_direct, direct), (via_adapter, adapter), (via_reflex_path, reflex)]
        for i in range(args.warmup + args.calls):
            if time.monotonic() > deadline:
                break
            for k in range(3):  # the side going first rotates from call to call
                call, samples = sides[(i + k) % 3]
                t0 = time.perf_counter()
                await call()
                if i >= args.warmup:
                    samples.append((time.perf_counter() - t0) * 1000)

        # -- front ends: the OpenAI-compatible endpoint and the LiteLLM proxy -----
        # Both in front of the same stub, against the same direct calls, in
        # one phase, the side going first rotating from call to call. They
        # run only for this phase, so their processes do not share the two
        # cores with the phases above.
        fronts = await front_ends(
            args, workdir, http, unary_url, router_addr, adapter_addr, capsule_addr, policy
        )

        # -- streaming --------------------------------------------------------------
        sbody = chat_body(None)

        async def adapter_stream(backend: str) -> tuple[float | None, list[float]]:
            t0 = time.perf_counter()
            a_ttft = None
            a_stamps: list[float] = []
            async for chunk in llm.stream_complete(
                MESSAGES, backend=backend, max_tokens=64, timeout=30
            ):
                if chunk.WhichOneof("kind") == "delta":
                    now = time.perf_counter()
                    a_stamps.append(now)
                    if a_ttft is None:
                        a_ttft = now - t0
            return a_ttft, a_stamps

        async def alternating(
            i: int, backend: str, url: str
        ) -> tuple[tuple[float | None, list[float]], tuple[float | None, list[float]]]:
            """(direct, adapter) (ttft_s, stamps) of one stream each; the side going first alternates."""

            async def direct() -> tuple[float | None, list[float]]:
                _, ttft, stamps = await direct_stream(http, url, sbody)
                return ttft, stamps

            if i % 2:
                d = await direct()
                return d, await adapter_stream(backend)
            a = await adapter_stream(backend)
            return await direct(), a

        s_direct_ttft: list[float] = []
        s_adapter_ttft: list[float] = []
        phase_end = time.monotonic() + args.seconds / 2
        for i in range(4 + args.ttft_calls):
            if time.monotonic() > phase_end:
                break
            (ttft, _), (a_ttft, _) = await alternating(i, "ttft", ttft_url)
            if i >= 4 and ttft is not None and a_ttft is not None:
                s_direct_ttft.append(ttft * 1000)
                s_adapter_ttft.append(a_ttft * 1000)

        s_direct_tps: list[float] = []
        s_adapter_tps: list[float] = []
        phase_end = time.monotonic() + args.seconds / 2
        for i in range(2 + args.stream_calls):
            if time.monotonic() > phase_end:
                break
            (_, stamps), (_, a_stamps) = await alternating(i, "paced", paced_url)
            if i >= 2:
                s_direct_tps.append(tokens_per_s(stamps))
                s_adapter_tps.append(tokens_per_s(a_stamps))

        await http.aclose()
        await channel.close()
        await router_channel.close()
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                # On SIGTERM a service delivers its queued events, then exits
                # (well under a second; the rest is margin for a loaded machine).
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        # Last, once the services have flushed their events on SIGTERM.
        capsule_proc.send_signal(signal.SIGTERM)
        out, _ = capsule_proc.communicate(timeout=10)
        if out.strip():
            llm_call_events, decision_events = (int(x) for x in out.split()[-2:])
        shutil.rmtree(workdir, ignore_errors=True)

    res: dict[str, Any] = {
        "calls": len(direct),
        "direct_p50_ms": statistics.median(direct),
        "direct_p99_ms": percentile(direct, 0.99),
        "adapter_p50_ms": statistics.median(adapter),
        "adapter_p99_ms": percentile(adapter, 0.99),
        "added_p50_ms": statistics.median(adapter) - statistics.median(direct),
        "added_p99_ms": percentile(adapter, 0.99) - percentile(direct, 0.99),
        "added_p50_paired_ms": statistics.median(
            [a - d for a, d in zip(adapter, direct, strict=True)]
        ),
        "reflex_p50_ms": statistics.median(reflex),
        "reflex_p99_ms": percentile(reflex, 0.99),
        "reflex_added_p50_ms": statistics.median(reflex) - statistics.median(direct),
        "reflex_added_p99_ms": percentile(reflex, 0.99) - percentile(direct, 0.99),
        "ttft_calls": len(s_direct_ttft),
        "stream_calls": len(s_direct_tps),
        "stream_direct_ttft_p50_ms": statistics.median(s_direct_ttft) if s_direct_ttft else None,
        "stream_adapter_ttft_p50_ms": statistics.median(s_adapter_ttft) if s_adapter_ttft else None,
        "stream_ttft_added_p50_ms": (
            statistics.median(s_adapter_ttft) - statistics.median(s_direct_ttft)
        )
        if s_direct_ttft
        else None,
        "stream_direct_tps_p50": statistics.median(s_direct_tps) if s_direct_tps else None,
        "stream_adapter_tps_p50": statistics.median(s_adapter_tps) if s_adapter_tps else None,
        "stream_tps_ratio": (statistics.median(s_adapter_tps) / statistics.median(s_direct_tps))
        if s_direct_tps and statistics.median(s_direct_tps)
        else None,
        **fronts,
        "llm_call_events": llm_call_events,
        "routing_decision_events": decision_events,
    }
    if res.get("litellm_added_p50_ms"):
        res["ours_vs_litellm_ratio"] = res["added_p50_ms"] / res["litellm_added_p50_ms"]
        res["reflex_vs_litellm_ratio"] = res["reflex_added_p50_ms"] / res["litellm_added_p50_ms"]
    return res


def report(res: dict[str, Any]) -> None:
    def fmt(v: Any, unit: str = "") -> str:
        return "n/a" if v is None else (f"{v:.3f}{unit}" if isinstance(v, float) else f"{v}{unit}")

    rows = [
        (
            "added latency p50 (Complete vs direct httpx)",
            fmt(res["added_p50_ms"], " ms"),
            "<= 1 ms",
            res["added_p50_ms"] <= TARGETS["added_p50_ms"],
        ),
        (
            "added latency p99",
            fmt(res["added_p99_ms"], " ms"),
            "<= 4 ms",
            res["added_p99_ms"] <= TARGETS["added_p99_ms"],
        ),
        ("  paired per-call added p50", fmt(res["added_p50_paired_ms"], " ms"), "-", None),
        (
            "  direct p50 / p99",
            f"{fmt(res['direct_p50_ms'])} / {fmt(res['direct_p99_ms'])} ms",
            "-",
            None,
        ),
        (
            "  adapter p50 / p99",
            f"{fmt(res['adapter_p50_ms'])} / {fmt(res['adapter_p99_ms'])} ms",
            "-",
            None,
        ),
        (
            "reflex path added p50 (Decide + Complete)",
            fmt(res["reflex_added_p50_ms"], " ms"),
            "<= 1.5 ms",
            res["reflex_added_p50_ms"] <= TARGETS["reflex_added_p50_ms"],
        ),
        (
            "reflex path added p99",
            fmt(res["reflex_added_p99_ms"], " ms"),
            "<= 5 ms",
            res["reflex_added_p99_ms"] <= TARGETS["reflex_added_p99_ms"],
        ),
        (
            "  reflex path p50 / p99",
            f"{fmt(res['reflex_p50_ms'])} / {fmt(res['reflex_p99_ms'])} ms",
            "-",
            None,
        ),
        (
            "stream TTFT added p50",
            fmt(res["stream_ttft_added_p50_ms"], " ms"),
            "<= 1 ms",
            None
            if res["stream_ttft_added_p50_ms"] is None
            else res["stream_ttft_added_p50_ms"] <= 1.0,
        ),
        (
            f"  TTFT direct / adapter p50, {res['ttft_calls']} streams each",
            f"{fmt(res['stream_direct_ttft_p50_ms'])} / {fmt(res['stream_adapter_ttft_p50_ms'])} ms",
            "-",
            None,
        ),
        (
            "stream tokens/s ratio (adapter/direct)",
            fmt(res["stream_tps_ratio"]),
            ">= 0.98",
            None if res["stream_tps_ratio"] is None else res["stream_tps_ratio"] >= 0.98,
        ),
        (
            "LiteLLM proxy added p50 (same stub, stream)",
            fmt(res["litellm_added_p50_ms"], " ms"),
            "-",
            None,
        ),
        (
            "  adapter added / LiteLLM added",
            fmt(res.get("ours_vs_litellm_ratio")),
            "<= 0.333",
            None
            if res.get("ours_vs_litellm_ratio") is None
            else res["ours_vs_litellm_ratio"] <= 1 / 3,
        ),
        (
            "  reflex path added / LiteLLM added",
            fmt(res.get("reflex_vs_litellm_ratio")),
            "<= 0.333",
            None
            if res.get("reflex_vs_litellm_ratio") is None
            else res["reflex_vs_litellm_ratio"] <= 1 / 3,
        ),
        (
            f"OpenAI endpoint added p50, unary ({res['frontend_calls']} calls)",
            fmt(res["endpoint_unary_added_p50_ms"], " ms"),
            "-",
            None,
        ),
        ("  LiteLLM added p50, unary", fmt(res["litellm_unary_added_p50_ms"], " ms"), "-", None),
        (
            "  endpoint / LiteLLM, unary",
            fmt(res["endpoint_vs_litellm_unary_ratio"]),
            "<= 0.333",
            None
            if res["endpoint_vs_litellm_unary_ratio"] is None
            else res["endpoint_vs_litellm_unary_ratio"] <= 1 / 3,
        ),
        (
            "OpenAI endpoint added p50, stream TTFT",
            fmt(res["endpoint_ttft_added_p50_ms"], " ms"),
            "-",
            None,
        ),
        (
            "  LiteLLM added p50, stream TTFT",
            fmt(res["litellm_ttft_added_p50_ms"], " ms"),
            "-",
            None,
        ),
        (
            "  endpoint / LiteLLM, TTFT",
            fmt(res["endpoint_vs_litellm_ttft_ratio"]),
            "<= 0.333",
            None
            if res["endpoint_vs_litellm_ttft_ratio"] is None
            else res["endpoint_vs_litellm_ttft_ratio"] <= 1 / 3,
        ),
        (
            "endpoint inside serve all, added p50 unary / TTFT",
            f"{fmt(res['serve_all_unary_added_p50_ms'])} / {fmt(res['serve_all_ttft_added_p50_ms'])} ms",
            "-",
            None,
        ),
        (
            "  serve all endpoint / LiteLLM, unary",
            fmt(res["serve_all_vs_litellm_unary_ratio"]),
            "<= 0.333",
            None
            if res["serve_all_vs_litellm_unary_ratio"] is None
            else res["serve_all_vs_litellm_unary_ratio"] <= 1 / 3,
        ),
        (
            "  serve all endpoint / LiteLLM, TTFT",
            fmt(res["serve_all_vs_litellm_ttft_ratio"]),
            "<= 0.333",
            None
            if res["serve_all_vs_litellm_ttft_ratio"] is None
            else res["serve_all_vs_litellm_ttft_ratio"] <= 1 / 3,
        ),
        (
            "  direct unary p50 / TTFT p50",
            f"{fmt(res['frontend_direct_unary_p50_ms'])} / {fmt(res['frontend_direct_ttft_p50_ms'])} ms",
            "-",
            None,
        ),
        (
            "events received by Capsule: LLMCall / RoutingDecision",
            f"{res['llm_call_events']} / {res['routing_decision_events']}",
            "-",
            None,
        ),
    ]
    print(f"{'figure':46} {'measured':>22}  {'target':>12}  ok")
    for name, value, target, ok in rows:
        mark = "" if ok is None else ("yes" if ok else "NO")
        print(f"{name:46} {value:>22}  {target:>12}  {mark}")


async def serve_capsule(port: int) -> None:
    """The --serve-capsule process: prints "ready", then on SIGTERM the LLMCall
    and RoutingDecision event counts."""
    server = aio.server()
    capsule = CountingCapsule()
    capsule_pb2_grpc.add_CapsuleServicer_to_server(capsule, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await server.stop(0)
    print(capsule.llm_calls, capsule.decisions, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description="Inference Adapter overhead benchmark")
    ap.add_argument("--calls", type=int, default=2000, help="unary calls per side")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument(
        "--ttft-calls", type=int, default=300, help="short paced streams per side (TTFT)"
    )
    ap.add_argument(
        "--stream-calls", type=int, default=60, help="long paced streams per side (tokens/s)"
    )
    ap.add_argument("--stream-tokens", type=int, default=40)
    ap.add_argument("--token-delay-ms", type=float, default=5.0)
    ap.add_argument("--seconds", type=float, default=60.0, help="time bound of the unary phase")
    ap.add_argument(
        "--frontend-calls",
        type=int,
        default=400,
        help="calls per side and kind through the OpenAI endpoint and LiteLLM",
    )
    ap.add_argument("--no-litellm", action="store_true")
    ap.add_argument(
        "--out",
        type=Path,
        default=ROOT / "bench/results/inference_overhead.json",
        help="where the JSON goes",
    )
    ap.add_argument("--serve-capsule", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_capsule:
        asyncio.run(serve_capsule(args.serve_capsule))
        return 0
    res = asyncio.run(run(args))
    res["machine"] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    res["targets"] = TARGETS
    res["command"] = "python bench/inference_overhead.py " + " ".join(sys.argv[1:])
    report(res)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
