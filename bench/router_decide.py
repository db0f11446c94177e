"""Router benchmark: Decide over gRPC, sequential latency and concurrent throughput.

    .venv/bin/python bench/router_decide.py [--sequential 3000] [--seconds 5] [--concurrency 64]

The Router runs as `speckit serve router` in its own process on 127.0.0.1,
with warm caches: a peer process (this script with --serve-peers) answers
Inference Health (every backend healthy) and Capsule CheckThresholds (every
model passing) and takes the decision events. The client process then measures

* sequential Decide latency (one call in flight): p50/p99 against p50 ≤ 0.7 ms;
* throughput with --concurrency calls in flight on one channel for --seconds:
  decisions/s against ≥ 3,000/s from one Router process.

For scale on a shared machine, the same figures are measured in the same run
against a *floor*: a Router servicer that returns a constant decision, served
by the same runtime (interceptors, health, reflection) in the peer process.
The difference is what the decision itself costs.

Bounded in count and time; prints a table with each target and writes
bench/results/router_decide.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from speckit_reflex.clients.ports import pick_port
from speckit_reflex.contract import percentile
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
TARGET_P50_MS = 0.7
TARGET_RATE = 3000.0

POLICY_TOML = """
[routing.reflex]
enabled = true
model_primary = "gpt-oss-20b"
model_fallbacks = ["qwen3-coder-30b-a3b"]

[[routing.reflex.backends]]
name = "sglang-a"
kind = "sglang"
endpoint = "http://127.0.0.1:3009/v1"
models = ["gpt-oss-20b"]

[[routing.reflex.backends]]
name = "vllm-b"
kind = "vllm"
endpoint = "http://127.0.0.1:3010/v1"
models = ["qwen3-coder-30b-a3b"]
"""


# -- the peer process: healthy Inference, passing Capsule ---------------------------


class _Inference(inference_pb2_grpc.InferenceServicer):
    async def Health(self, request, context):
        reply = inference_pb2.HealthReply()
        for name in ("sglang-a", "vllm-b"):
            reply.backends.add(
                backend=name, healthy=True, reachable=True
            ).checked_at.GetCurrentTime()
        return reply


class _Capsule(capsule_pb2_grpc.CapsuleServicer):
    def __init__(self) -> None:
        self.events = 0

    async def CheckThresholds(self, request, context):
        return capsule_pb2.CheckThresholdsReply(passed=True, model=request.model)

    async def GetUsage(self, request, context):
        return capsule_pb2.UsageSummary()

    async def AppendEvents(self, request, context):
        self.events += len(request.events)
        return capsule_pb2.AppendEventsReply(inserted=len(request.events))


class _ConstantRouter(router_pb2_grpc.RouterServicer):
    """The floor: a decision of the same size, no work."""

    def __init__(self) -> None:
        self.answer = router_pb2.RoutingDecision(
            decision_id="0" * 36,
            role=common_pb2.ROLE_IMPLEMENTER,
            stage=common_pb2.STAGE_IMPLEMENT,
            mode=common_pb2.ROUTING_MODE_REFLEX,
            reason=common_pb2.ROUTING_REASON_HEALTHY_AND_THRESHOLDS_MET,
            detail="gpt-oss-20b on sglang-a: backend healthy, bakeoff thresholds met",
            model="gpt-oss-20b",
            backend="sglang-a",
            endpoint="http://127.0.0.1:3009/v1",
            latency_ms=0.01,
            policy_hash="0" * 64,
            session_id="bench",
            attempt=1,
        )

    async def Decide(self, request, context):
        return self.answer


class _FloorService:
    name = "router"
    service_names = (router_pb2.DESCRIPTOR.services_by_name["Router"].full_name,)

    def register(self, server: grpc.aio.Server) -> None:
        router_pb2_grpc.add_RouterServicer_to_server(_ConstantRouter(), server)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


async def serve_peers(inference_port: int, capsule_port: int, floor_port: int) -> None:
    from speckit_reflex.runtime.server import create_server
    from speckit_reflex.runtime.settings import RuntimeSettings

    server = grpc.aio.server()
    inference_pb2_grpc.add_InferenceServicer_to_server(_Inference(), server)
    capsule_pb2_grpc.add_CapsuleServicer_to_server(_Capsule(), server)
    server.add_insecure_port(f"127.0.0.1:{inference_port}")
    server.add_insecure_port(f"127.0.0.1:{capsule_port}")
    await server.start()
    floor = await create_server(_FloorService(), f"127.0.0.1:{floor_port}", RuntimeSettings())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await floor.stop(0)
    await server.stop(0)


# -- the client ---------------------------------------------------------------------


REQUEST = router_pb2.DecideRequest(
    stage=common_pb2.STAGE_IMPLEMENT,
    role=common_pb2.ROLE_IMPLEMENTER,
    session_id="bench",
    attempt=1,
)


async def wait_ready(
    channel: grpc.aio.Channel, stub: router_pb2_grpc.RouterStub, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    health = health_pb2_grpc.HealthStub(channel)
    while time.monotonic() < deadline:
        try:
            status = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
            if status.status == health_pb2.HealthCheckResponse.SERVING:
                d = await stub.Decide(REQUEST, timeout=2)
                if d.mode == common_pb2.ROUTING_MODE_REFLEX:
                    return  # caches warm: health and verdicts are in
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError("router did not become ready with warm caches")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(
    addr: str,
    sequential: int,
    seconds: float,
    concurrency: int,
    server_pid: int,
    other_pids: tuple[int, ...] = (),
) -> dict[str, float]:
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        await wait_ready(channel, stub, 30)
        for _ in range(300):  # warm-up
            await stub.Decide(REQUEST)

        latencies: list[float] = []
        server_ms: list[float] = []
        stop_at = time.perf_counter() + seconds * 2
        for _ in range(sequential):
            t0 = time.perf_counter()
            d = await stub.Decide(REQUEST)
            latencies.append((time.perf_counter() - t0) * 1000)
            server_ms.append(d.latency_ms)
            if time.perf_counter() > stop_at:
                break

        done = 0
        errors = 0
        end = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done, errors
            while time.perf_counter() < end:
                try:
                    await stub.Decide(REQUEST)
                    done += 1
                except grpc.aio.AioRpcError:
                    errors += 1

        pids = (server_pid, *other_pids)
        cpu0 = [cpu_seconds(p) for p in pids]
        client0 = time.process_time()
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
        client_cpu = time.process_time() - client0
        cpu = [cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True)]
    return {
        "sequential_calls": len(latencies),
        "p50_ms": statistics.median(latencies),
        "p99_ms": percentile(latencies, 0.99),
        "server_decide_p50_ms": statistics.median(server_ms),
        "concurrency": concurrency,
        "throughput_seconds": elapsed,
        "decisions": done,
        "errors": errors,
        "decisions_per_s": done / elapsed,
        # CPU per completed call, in microseconds: the serving process, the
        # client, and any other process of the set-up (the peer taking events).
        "server_cpu_us_per_call": cpu[0] / max(done, 1) * 1e6,
        "server_cpu_share": cpu[0] / elapsed,
        "client_cpu_us_per_call": client_cpu / max(done, 1) * 1e6,
        "client_cpu_share": client_cpu / elapsed,
        "others_cpu_share": sum(cpu[1:]) / elapsed,
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--sequential", type=int, default=3000, help="sequential Decide calls (latency)"
    )
    ap.add_argument("--seconds", type=float, default=5.0, help="duration of the throughput phase")
    ap.add_argument(
        "--concurrency", type=int, default=64, help="calls in flight during the throughput phase"
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=ROOT / "bench" / "results" / "router_decide.json",
        help="where the JSON goes",
    )
    ap.add_argument(
        "--serve-peers",
        nargs=3,
        type=int,
        metavar=("INFERENCE", "CAPSULE", "FLOOR"),
        help=argparse.SUPPRESS,
    )
    args = ap.parse_args()
    if args.serve_peers:
        asyncio.run(serve_peers(*args.serve_peers))
        return 0

    router_port, inference_port, capsule_port, floor_port = (
        pick_port(),
        pick_port(),
        pick_port(),
        pick_port(),
    )
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        policy = Path(tmp) / "model_policy.toml"
        policy.write_text(POLICY_TOML)
        env = os.environ | {
            "SPECKIT_ROUTER_ADDR": f"127.0.0.1:{router_port}",
            "SPECKIT_INFERENCE_ADDR": f"127.0.0.1:{inference_port}",
            "SPECKIT_CAPSULE_ADDR": f"127.0.0.1:{capsule_port}",
            "SPECKIT_POLICY": str(policy),
            "SPECKIT_HOME": str(Path(tmp) / ".speckit"),
            "SPECKIT_LOG_LEVEL": "WARNING",
        }
        try:
            peers = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--serve-peers",
                    str(inference_port),
                    str(capsule_port),
                    str(floor_port),
                ],
                stdout=subprocess.PIPE,
                env=env,
            )
            procs.append(peers)
            assert peers.stdout is not None and peers.stdout.readline().strip() == b"ready"
            router = subprocess.Popen(
                [sys.executable, "-m", "speckit_reflex.cli.main", "serve", "router"],
                env=env,
                cwd=tmp,
            )
            procs.append(router)
            result = asyncio.run(
                measure(
                    f"127.0.0.1:{router_port}",
                    args.sequential,
                    args.seconds,
                    args.concurrency,
                    router.pid,
                    (peers.pid,),
                )
            )
            floor = asyncio.run(
                measure(
                    f"127.0.0.1:{floor_port}",
                    args.sequential,
                    args.seconds,
                    args.concurrency,
                    peers.pid,
                    (router.pid,),
                )
            )
        finally:
            # Router first, so its queued decision events still reach the peer Capsule.
            for p in reversed(procs):
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()

    rows = [
        (
            "Decide p50 over gRPC, sequential",
            f"{result['p50_ms']:.3f} ms",
            f"<= {TARGET_P50_MS} ms",
            result["p50_ms"] <= TARGET_P50_MS,
        ),
        ("Decide p99 over gRPC, sequential", f"{result['p99_ms']:.3f} ms", "-", None),
        ("decision inside the Router, p50", f"{result['server_decide_p50_ms']:.4f} ms", "-", None),
        (
            f"decisions/s, {result['concurrency']} in flight, one channel",
            f"{result['decisions_per_s']:,.0f}",
            f">= {TARGET_RATE:,.0f}",
            result["decisions_per_s"] >= TARGET_RATE,
        ),
        ("floor (constant answer, same runtime): p50", f"{floor['p50_ms']:.3f} ms", "-", None),
        ("floor: calls/s, same concurrency", f"{floor['decisions_per_s']:,.0f}", "-", None),
        (
            "Router process CPU per decision",
            f"{result['server_cpu_us_per_call']:.0f} us",
            "-",
            None,
        ),
        ("floor process CPU per call", f"{floor['server_cpu_us_per_call']:.0f} us", "-", None),
        (
            "client CPU per call (Router / floor)",
            f"{result['client_cpu_us_per_call']:.0f} / {floor['client_cpu_us_per_call']:.0f} us",
            "-",
            None,
        ),
        (
            "CPU share server/client/other, Router phase",
            f"{result['server_cpu_share']:.2f}/{result['client_cpu_share']:.2f}/{result['others_cpu_share']:.2f}",
            "-",
            None,
        ),
        (
            "CPU share server/client/other, floor phase",
            f"{floor['server_cpu_share']:.2f}/{floor['client_cpu_share']:.2f}/{floor['others_cpu_share']:.2f}",
            "-",
            None,
        ),
        ("Router p50 / floor p50", f"{result['p50_ms'] / floor['p50_ms']:.2f}x", "-", None),
        (
            "Router rate / floor rate",
            f"{result['decisions_per_s'] / floor['decisions_per_s']:.2f}",
            "-",
            None,
        ),
    ]
    print(f"{'figure':<48} {'measured':>14} {'target':>12}  ok")
    for name, measured, target, ok in rows:
        print(
            f"{name:<48} {measured:>14} {target:>12}  {'-' if ok is None else ('yes' if ok else 'NO')}"
        )
    out = {
        "benchmark": "router_decide",
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "targets": {"p50_ms": TARGET_P50_MS, "decisions_per_s": TARGET_RATE},
        "results": result,
        "floor": floor,
        "command": " ".join([".venv/bin/python", "bench/router_decide.py", *sys.argv[1:]]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
