"""What metrics and tracing cost on Router.Decide: CPU per call, one process.

    .venv/bin/python bench/observability_overhead.py [--calls 3000] [--rounds 7] [--core-only]

Three Routers, built as `speckit serve router` builds them (router.app.build,
runtime.server.create_server) with bench/router_decide.py's policy and warm
caches, serve on 127.0.0.1 in this process: `off` (no SPECKIT_METRICS_ADDR,
no OTLP endpoint), `metrics` (the RPC interceptor, the decision counter) and
`tracing` (the gRPC instrumentation, a router.decide span and stamped
events, with an SDK provider that exports nowhere). A stub Capsule takes the
decision events. Each round sends `--calls` sequential Decide calls to each
Router in turn from one client; the figure is process CPU per call
(time.process_time, client and servers together, so the difference between
configurations is what each adds), the minimum over the rounds, which a
loaded machine disturbs least. `--core-only` times Router.decide() alone with
both off; run it also on the code from before metrics and tracing existed
(PYTHONPATH pointing at that checkout's services/ and clients/) to see what
"off" costs (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from pathlib import Path

import grpc

from speckit_reflex.policy import load_policy
from speckit_reflex.router import app as router_app
from speckit_reflex.router.caches import CachedHealth, CachedVerdict
from speckit_reflex.runtime.bootstrap import ServiceContext
from speckit_reflex.runtime.server import create_server
from speckit_reflex.runtime.settings import RuntimeSettings
from speckit_reflex.v1 import capsule_pb2, capsule_pb2_grpc, common_pb2, router_pb2, router_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent


class _Capsule(capsule_pb2_grpc.CapsuleServicer):
    async def AppendEvents(self, request, context):
        return capsule_pb2.AppendEventsReply(inserted=len(request.events))

    async def CheckThresholds(self, request, context):
        return capsule_pb2.CheckThresholdsReply(passed=True, model=request.model)


def _warm(service: router_app.RouterService) -> None:
    caches = service.refresher._caches  # the bench fills what the refresher would
    now = time.time()
    caches.set_health([CachedHealth("sglang-a", True, now), CachedHealth("vllm-b", True, now)])
    for model in ("gpt-oss-20b", "qwen3-coder-30b-a3b"):
        caches.set_verdict(CachedVerdict(model, True, now))


async def _router(kind: str, policy_path: Path, capsule_addr: str, tmp: Path):
    settings = RuntimeSettings(
        router_addr="127.0.0.1:0",
        capsule_addr=capsule_addr,
        inference_addr="127.0.0.1:9",
        home=tmp,
        policy=str(policy_path),
    )
    ctx = ServiceContext(settings=settings, policy=load_policy(policy_path))
    if kind == "metrics":
        from speckit_reflex.runtime.metrics import Metrics

        ctx.metrics = Metrics()
    elif kind == "tracing":
        from opentelemetry.sdk.trace import TracerProvider

        from speckit_reflex.runtime.tracing import Tracing

        ctx.tracing = Tracing(TracerProvider())  # spans made and ended, exported nowhere
    service = router_app.build(ctx)
    # Only what the configuration turns on reaches create_server (so `off`
    # also runs on the code from before metrics and tracing existed).
    extra = (
        {"metrics": ctx.metrics}
        if kind == "metrics"
        else {"tracing": ctx.tracing}
        if kind == "tracing"
        else {}
    )
    server = await create_server(service, settings.router_addr, settings, **extra)
    _warm(service)
    return ctx, server


def core_only(calls: int, rounds: int) -> float:
    """Router.decide() in-process (no gRPC), tracing and metrics off: us per call."""
    import tempfile

    async def run() -> float:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            (tmp / "model_policy.toml").write_text(_policy_toml())
            ctx, server = await _router("off", tmp / "model_policy.toml", "127.0.0.1:9", tmp)
            router = server.service.router  # type: ignore[attr-defined]
            req = router_pb2.DecideRequest(
                stage=common_pb2.STAGE_IMPLEMENT,
                role=common_pb2.ROLE_IMPLEMENTER,
                session_id="bench",
                attempt=1,
            )
            best = float("inf")
            try:
                for _ in range(rounds):
                    _warm(server.service)  # type: ignore[arg-type]
                    started = time.process_time()
                    for _ in range(calls):
                        router.decide(req)
                    best = min(best, (time.process_time() - started) / calls * 1e6)
            finally:
                await server.stop(0)
                await ctx.close()
            return best

    return asyncio.run(run())


def _policy_toml() -> str:
    text = (Path(__file__).resolve().parent / "router_decide.py").read_text()
    return text.split('POLICY_TOML = """', 1)[1].split('"""', 1)[0]


async def main(calls: int, rounds: int, out: Path) -> dict[str, float]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "model_policy.toml").write_text(_policy_toml())
        capsule = grpc.aio.server()
        capsule_pb2_grpc.add_CapsuleServicer_to_server(_Capsule(), capsule)
        capsule_port = capsule.add_insecure_port("127.0.0.1:0")
        await capsule.start()
        kinds = ("off", "metrics", "tracing")
        routers = {
            k: await _router(k, tmp / "model_policy.toml", f"127.0.0.1:{capsule_port}", tmp)
            for k in kinds
        }
        best = {k: float("inf") for k in kinds}
        req = router_pb2.DecideRequest(
            stage=common_pb2.STAGE_IMPLEMENT,
            role=common_pb2.ROLE_IMPLEMENTER,
            session_id="bench",
            attempt=1,
        )
        try:
            channels = {k: grpc.aio.insecure_channel(s.address) for k, (_, s) in routers.items()}
            stubs = {k: router_pb2_grpc.RouterStub(ch) for k, ch in channels.items()}
            for k in kinds:  # warm-up
                for _ in range(200):
                    await stubs[k].Decide(req, timeout=5)
            for _ in range(rounds):
                for k in kinds:
                    _warm(routers[k][1].service)  # type: ignore[arg-type]
                    started = time.process_time()
                    for _ in range(calls):
                        reply = await stubs[k].Decide(req, timeout=5)
                    best[k] = min(best[k], (time.process_time() - started) / calls * 1e6)
                    assert reply.mode == common_pb2.ROUTING_MODE_REFLEX, reply.detail
            for ch in channels.values():
                await ch.close()
        finally:
            for ctx, server in routers.values():
                await server.stop(0)
                await ctx.close()
            await capsule.stop(0)
    result = {f"{k}_cpu_us_per_call": round(v, 1) for k, v in best.items()}
    result["metrics_added_us"] = round(best["metrics"] - best["off"], 1)
    result["tracing_added_us"] = round(best["tracing"] - best["off"], 1)
    text = json.dumps({"calls": calls, "rounds": rounds, **result}, indent=2) + "\n"
    await asyncio.to_thread(_write, out, text)
    return result


def _write(out: Path, text: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--calls", type=int, default=3000, help="sequential Decide calls per Router per round"
    )
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "observability_overhead.json"
    )
    ap.add_argument(
        "--core-only",
        action="store_true",
        help="time Router.decide() in-process only, metrics and tracing off (runs on older code too)",
    )
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # the peers this bench leaves out make the refresher complain
    if args.core_only:
        print(
            f"Router.decide() in-process, off: {core_only(args.calls * 10, args.rounds):.2f} us per call"
        )
        raise SystemExit(0)
    for name, value in asyncio.run(main(args.calls, args.rounds, args.out)).items():
        print(f"{name:<28} {value:>8}")
