"""PatchLoop benchmark: per-attempt overhead and prefix-cache reuse.

    .venv/bin/python bench/patchloop_bench.py [--runs 4] [--attempts 8] [--llm-tasks 3] [--llm-seconds 300]

1. Overhead per attempt, excluding the compiler and the model (target p50
   <= 20 ms). The PatchLoop service runs on a real gRPC server on 127.0.0.1
   with fast in-process stubs for Router, Inference (an instant reply whose
   patch does not fix the build, so every run uses all its attempts) and
   Capsule. The loop instruments each attempt itself: wall time minus the
   build subprocess time minus the model call time; the figures come from the
   PATCH_ATTEMPT events the stub Capsule receives. Builds are real
   `cargo check` runs of a std-only crate in the sandbox.
2. Cache reuse on attempts >= 2 (cached_tokens / prompt_tokens, target >= 0.8)
   against the embedded llama.cpp server with SmolLM2-135M, through the real
   Capsule, Inference, Router and PatchLoop services (force_mode=REFLEX, as a
   bakeoff trial), on tasks of the packaged suite reflex_patchloop_v1
   (clients/speckit_reflex/bakeoff/suites/). Skipped with
   --llm-tasks 0; bounded by --llm-seconds.

Prints a table with each target and writes bench/results/patchloop.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from grpc import aio
from grpc.aio import AioRpcError

from speckit_reflex.clients.patchloop import PatchLoopClient
from speckit_reflex.clients.ports import pick_port
from speckit_reflex.clients.router import RouterClient
from speckit_reflex.contract import percentile
from speckit_reflex.policy import load_policy
from speckit_reflex.runtime.bootstrap import start_services
from speckit_reflex.runtime.settings import RuntimeSettings
from speckit_reflex.v1 import (
    capsule_pb2,
    capsule_pb2_grpc,
    common_pb2,
    inference_pb2,
    inference_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
)

ROOT = Path(__file__).resolve().parent.parent
CRATE = ROOT / "tests" / "patchloop" / "crates" / "field_typo"
SUITE = ROOT / "clients" / "speckit_reflex" / "bakeoff" / "suites" / "reflex_patchloop_v1" / "tasks"
TARGET_OVERHEAD_P50_MS = 20.0
TARGET_CACHE_REUSE = 0.8
USELESS_PATCH = json.dumps(
    {
        "edits": [
            {
                "file": "src/lib.rs",
                "line_start": 9,
                "line_end": 9,
                "replacement": "        2 * (self.width + self.hieght) ",
            }
        ]
    }
)


class StubRouter(router_pb2_grpc.RouterServicer):
    async def Decide(self, request, context):  # type: ignore[no-untyped-def]
        return router_pb2.RoutingDecision(
            decision_id="d",
            mode=common_pb2.ROUTING_MODE_REFLEX,
            model="stub",
            backend="stub",
            reason=common_pb2.ROUTING_REASON_HEALTHY_AND_THRESHOLDS_MET,
        )


class StubInference(inference_pb2_grpc.InferenceServicer):
    async def StreamComplete(self, request, context):  # type: ignore[no-untyped-def]
        yield inference_pb2.CompleteChunk(delta=USELESS_PATCH)
        yield inference_pb2.CompleteChunk(
            final=inference_pb2.CompleteReply(
                content=USELESS_PATCH,
                schema_valid=True,
                attempts=1,
                backend="stub",
                model="stub",
                usage=common_pb2.Usage(prompt_tokens=500, completion_tokens=40, cached_tokens=450),
                timing=common_pb2.Timing(ttft_ms=0.1, latency_ms=0.2, tokens_per_s=1000),
            )
        )


class StubCapsule(capsule_pb2_grpc.CapsuleServicer):
    def __init__(self) -> None:
        self.events: list[common_pb2.Event] = []

    async def AppendEvents(self, request, context):  # type: ignore[no-untyped-def]
        self.events.extend(request.events)
        return capsule_pb2.AppendEventsReply(inserted=len(request.events))


async def overhead(runs: int, attempts: int, work: Path) -> dict:
    server = aio.server()
    capsule = StubCapsule()
    router_pb2_grpc.add_RouterServicer_to_server(StubRouter(), server)
    inference_pb2_grpc.add_InferenceServicer_to_server(StubInference(), server)
    capsule_pb2_grpc.add_CapsuleServicer_to_server(capsule, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    peers = f"127.0.0.1:{port}"
    settings = RuntimeSettings(
        router_addr=peers,
        inference_addr=peers,
        capsule_addr=peers,
        patchloop_addr="127.0.0.1:0",
        home=work / ".speckit",
        workspace_roots=str(work),
    )
    ctx, running = await start_services(["patchloop"], settings, load_policy(None))
    try:
        client = PatchLoopClient(ctx.channel("patchloop"))
        for i in range(runs):
            ws = work / f"overhead-{i}"
            shutil.copytree(CRATE, ws)
            _, result = await client.run_to_end(
                str(ws), max_attempts=attempts, compiler_fast_path=False, timeout_s=600
            )
            assert result.attempts == attempts, result.reason
        deadline = time.monotonic() + 10
        while (
            len([e for e in capsule.events if e.type == common_pb2.EVENT_TYPE_PATCH_ATTEMPT])
            < runs * attempts
        ):
            assert time.monotonic() < deadline, "PATCH_ATTEMPT events did not all arrive"
            await asyncio.sleep(0.05)
    finally:
        for r in running:
            await r.stop(1)
        await ctx.close()
        await server.stop(0)
    timings = [
        dict(e.payload["timing"])
        for e in capsule.events
        if e.type == common_pb2.EVENT_TYPE_PATCH_ATTEMPT
    ]
    ov = [t["overhead_ms"] for t in timings]
    return {
        "samples": len(ov),
        "overhead_p50_ms": statistics.median(ov),
        "overhead_p95_ms": percentile(ov, 0.95),
        "compile_p50_ms": statistics.median(t["compile_ms"] for t in timings),
        "model_call_p50_ms": statistics.median(t["model_ms"] for t in timings),
        "attempt_p50_ms": statistics.median(t["attempt_ms"] for t in timings),
    }


async def cache_reuse(tasks: int, seconds: float, work: Path) -> dict:
    port = pick_port()
    llama = await asyncio.to_thread(
        subprocess.Popen,
        [sys.executable, "-m", "speckit_reflex.cli.main", "llm", "serve", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    model = "smollm2-135m-instruct"
    try:
        deadline = time.monotonic() + 120
        async with httpx.AsyncClient(timeout=1) as http:
            while True:
                try:
                    if (await http.get(f"http://127.0.0.1:{port}/health")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or llama.poll() is not None:
                    raise RuntimeError("embedded llama.cpp server did not start")
                await asyncio.sleep(0.3)
        policy_path = work / "model_policy.toml"
        policy_path.write_text(f"""
[routing.reflex]
enabled = true
model = "{model}"
timeout_ms = 240000
backends = [{{ name = "local", kind = "llamacpp", endpoint = "http://127.0.0.1:{port}/v1", models = ["{model}"] }}]
[routing.health]
probe_interval_s = 60
stale_after_s = 600
probe_timeout_ms = 120000
[privacy]
local_only = true
[inference]
max_validation_retries = 0
[patchloop]
max_tokens = 256
""")
        settings = RuntimeSettings(
            router_addr="127.0.0.1:0",
            inference_addr="127.0.0.1:0",
            capsule_addr="127.0.0.1:0",
            patchloop_addr="127.0.0.1:0",
            database_url=f"sqlite:///{work / 'bench.db'}",
            home=work / ".speckit",
            workspace_roots=str(work),
        )
        ctx, running = await start_services(
            ["capsule", "inference", "router", "patchloop"], settings, load_policy(policy_path)
        )
        ratios: list[float] = []
        per_task: list[dict] = []
        stop_at = time.monotonic() + seconds
        try:
            await _wait_for_reflex_route(RouterClient(ctx.channel("router")), deadline_s=120)
            client = PatchLoopClient(ctx.channel("patchloop"))
            for task_dir in sorted(SUITE.iterdir())[: max(tasks, 0)]:
                if time.monotonic() > stop_at:
                    break
                ws = work / "llm" / task_dir.name
                shutil.copytree(task_dir / "crate", ws)
                events, result = await client.run_to_end(
                    str(ws),
                    max_attempts=3,
                    compiler_fast_path=False,
                    force_mode=common_pb2.ROUTING_MODE_REFLEX,
                    timeout_s=max(60.0, stop_at - time.monotonic() + 60),
                )
                calls = [e for e in events if e.WhichOneof("kind") == "model_call"]
                task_ratios = [
                    c.model_call.cache_reuse
                    for c in calls[1:]
                    if c.model_call.HasField("cache_reuse")
                ]
                ratios.extend(task_ratios)
                per_task.append(
                    {
                        "task": task_dir.name,
                        "attempts": result.attempts,
                        "outcome": result.reason[:120],
                        "cache_reuse_attempts_ge2": task_ratios,
                        "prompt_tokens": [c.model_call.usage.prompt_tokens for c in calls],
                    }
                )
        finally:
            for r in reversed(running):
                await r.stop(1)
            await ctx.close()
    finally:
        llama.terminate()
        try:
            llama.wait(10)
        except subprocess.TimeoutExpired:
            llama.kill()
    return {
        "samples": len(ratios),
        "cache_reuse_p50": statistics.median(ratios) if ratios else None,
        "cache_reuse_min": min(ratios) if ratios else None,
        "tasks": per_task,
    }


async def _wait_for_reflex_route(router: RouterClient, deadline_s: float) -> None:
    """Until the Router has seen the backend healthy (its first probe can be slow)."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            await router.decide(
                stage=common_pb2.STAGE_IMPLEMENT,
                role=common_pb2.ROLE_IMPLEMENTER,
                session_id="bench-readiness",
                attempt=1,
                force_mode=common_pb2.ROUTING_MODE_REFLEX,
                timeout=10,
            )
            return
        except AioRpcError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the Router never saw the local backend healthy: {exc.details()}"
                ) from None
        await asyncio.sleep(2.0)


def _row(name: str, value: float | None, target: str, ok: bool | None) -> str:
    shown = "n/a" if value is None else f"{value:.3f}"
    verdict = "" if ok is None else ("PASS" if ok else "FAIL")
    return f"{name:<44} {shown:>12}  {target:<14} {verdict}"


async def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--attempts", type=int, default=8)
    ap.add_argument("--llm-tasks", type=int, default=3)
    ap.add_argument("--llm-seconds", type=float, default=300)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "patchloop.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="speckit-bench-patchloop-"))
    try:
        ov = await overhead(args.runs, args.attempts, work)
        cr = (
            await cache_reuse(args.llm_tasks, args.llm_seconds, work)
            if args.llm_tasks > 0
            else None
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'figure':<44} {'value':>12}  {'target':<14}")
    print(
        _row(
            "overhead per attempt p50 (ms)",
            ov["overhead_p50_ms"],
            "<= 20 ms",
            ov["overhead_p50_ms"] <= TARGET_OVERHEAD_P50_MS,
        )
    )
    print(_row("overhead per attempt p95 (ms)", ov["overhead_p95_ms"], "-", None))
    print(_row("  (compile p50, ms, excluded)", ov["compile_p50_ms"], "-", None))
    print(_row("  (model call p50 via stub, ms, excluded)", ov["model_call_p50_ms"], "-", None))
    print(f"  samples: {ov['samples']} attempts")
    if cr is not None:
        p50 = cr["cache_reuse_p50"]
        print(
            _row(
                "cache reuse attempts>=2 p50 (llama.cpp)",
                p50,
                ">= 0.8",
                None if p50 is None else p50 >= TARGET_CACHE_REUSE,
            )
        )
        print(_row("cache reuse attempts>=2 min", cr["cache_reuse_min"], "-", None))
        print(f"  samples: {cr['samples']} attempts over {len(cr['tasks'])} task(s)")
    out = {
        "bench": "patchloop",
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "command": "python bench/patchloop_bench.py " + " ".join(sys.argv[1:]),
        "targets": {
            "overhead_p50_ms": TARGET_OVERHEAD_P50_MS,
            "cache_reuse_attempts_ge2": TARGET_CACHE_REUSE,
        },
        "overhead": ov,
        "cache_reuse": cr,
    }
    path = args.out.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    asyncio.run(main())
