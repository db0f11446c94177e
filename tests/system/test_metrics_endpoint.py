"""`speckit serve all` as a real process: with SPECKIT_METRICS_ADDR it serves one
/metrics endpoint reporting all four services; without it, it listens on the
four gRPC ports and nothing else (read from the process's own sockets)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

import httpx
from grpc import aio

from speckit_reflex.clients.health import is_serving
from speckit_reflex.v1 import capsule_pb2, capsule_pb2_grpc, router_pb2, router_pb2_grpc
from tests.ports import listening_ports, pick_port, start_with_fresh_ports, wait_ready

SERVICES = ("router", "inference", "patchloop", "capsule")
ROOT = Path(__file__).resolve().parents[2]


async def serve_all(
    tmp_path: Path, with_metrics: bool
) -> tuple[asyncio.subprocess.Process, dict[str, int], int | None]:
    """`speckit serve all` on picked ports (new ones when a start loses one, see
    tests/ports.py), ready: PatchLoop (started last) serving, and /metrics up
    when asked for. Returns the process, the services' ports, the metrics port."""

    async def start() -> tuple[asyncio.subprocess.Process, dict[str, int], int | None]:
        ports = {name: pick_port() for name in SERVICES}
        metrics_port = pick_port() if with_metrics else None
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SPECKIT_", "OTEL_"))}
        env.update({f"SPECKIT_{n.upper()}_ADDR": f"127.0.0.1:{p}" for n, p in ports.items()})
        env["SPECKIT_HOME"] = str(tmp_path / "home")
        if metrics_port is not None:
            env["SPECKIT_METRICS_ADDR"] = f"127.0.0.1:{metrics_port}"
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "speckit_reflex.cli.main",
            "serve",
            "all",
            env=env,
            cwd=tmp_path,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )

        async def ready() -> bool:
            if not await is_serving(f"127.0.0.1:{ports['patchloop']}", timeout_s=1.0):
                return False
            return metrics_port is None or await _metrics_answer(metrics_port)

        try:
            await wait_ready(
                ready,
                lambda: None if proc.returncode is None else f"exit {proc.returncode}",
                what="speckit serve all",
            )
        except BaseException:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        return proc, ports, metrics_port

    return await start_with_fresh_ports(start)


async def _metrics_answer(port: int) -> bool:
    async with httpx.AsyncClient() as http:
        try:
            return (await http.get(f"http://127.0.0.1:{port}/metrics", timeout=5)).is_success
        except httpx.TransportError:
            return False


async def stop(proc: asyncio.subprocess.Process) -> None:
    proc.terminate()
    await asyncio.wait_for(proc.wait(), 30)


async def scrape(port: int) -> str:
    async with httpx.AsyncClient() as http:
        reply = await http.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        return reply.raise_for_status().text


async def test_serve_all_serves_one_metrics_endpoint_for_the_four(tmp_path: Path) -> None:
    proc, ports, metrics_port = await serve_all(tmp_path, with_metrics=True)
    assert metrics_port is not None
    try:
        assert listening_ports(proc.pid) == {*ports.values(), metrics_port}
        async with aio.insecure_channel(f"127.0.0.1:{ports['router']}") as ch:
            await router_pb2_grpc.RouterStub(ch).GetPolicy(
                router_pb2.GetPolicyRequest(), timeout=10
            )
        async with aio.insecure_channel(f"127.0.0.1:{ports['capsule']}") as ch:
            await capsule_pb2_grpc.CapsuleStub(ch).GetUsage(
                capsule_pb2.GetUsageRequest(), timeout=10
            )
        text = await scrape(metrics_port)
    finally:
        await stop(proc)
    assert (
        'speckit_rpc_server_handled_total{code="OK",method="GetPolicy",service="router"} 1.0'
        in text
    )
    assert (
        'speckit_rpc_server_handled_total{code="OK",method="GetUsage",service="capsule"} 1.0'
        in text
    )
    for sink in ("router", "inference", "patchloop"):
        assert f'speckit_event_sink_backlog{{service="{sink}"}}' in text
    # Each family once, though three services feed the sink families.
    assert text.count("# TYPE speckit_event_sink_backlog gauge") == 1
    assert "speckit_backend_healthy{" in text and "speckit_model_verdict{" in text
    # Every metric the Grafana dashboard and the docs name is one the services expose.
    exposed = set(re.findall(r"^# TYPE (speckit_\w+) ", text, re.M))
    exposed |= {f"{name}_total" for name in exposed}
    dashboard = json.dumps(
        json.loads((ROOT / "compose" / "grafana" / "speckit-reflex.json").read_text())
    )
    named = {re.sub(r"_(bucket|sum|count)$", "", m) for m in re.findall(r"speckit_\w+", dashboard)}
    named |= set(re.findall(r"`(speckit_\w+)`", (ROOT / "docs" / "observability.md").read_text()))
    assert named - {"speckit_reflex", "speckit-reflex"} <= exposed, named - exposed


async def test_serve_all_without_the_variable_serves_no_metrics(tmp_path: Path) -> None:
    proc, ports, _ = await serve_all(tmp_path, with_metrics=False)
    try:
        assert listening_ports(proc.pid) == set(ports.values())
    finally:
        await stop(proc)
