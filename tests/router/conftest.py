"""Router test helpers: policies built in code, in-memory caches with a fixed
clock, and controllable Inference/Capsule servicers on real gRPC servers."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc import aio

from speckit_reflex.policy import LoadedPolicy
from speckit_reflex.policy.model import Policy
from speckit_reflex.router.caches import CachedHealth, CachedVerdict, CloudUsage, RouterCaches
from speckit_reflex.v1 import (
    capsule_pb2,
    capsule_pb2_grpc,
    common_pb2,
    inference_pb2,
    inference_pb2_grpc,
)
from tests.ports import HeldPort

PRIMARY = "gpt-oss-20b"
BACKUP = "qwen3-coder-30b-a3b"
LAST = "qwen2.5-coder-32b"
CHAIN = (PRIMARY, BACKUP, LAST)

# Three local servers: the primary model on SGLang, the backup on a second
# SGLang, the dense last resort (and the backup again) on vLLM.
BASE_POLICY: dict[str, Any] = {
    "routing": {
        "reflex": {
            "enabled": True,
            "model_primary": PRIMARY,
            "model_fallbacks": [BACKUP, LAST],
            "max_failures": 2,
            "backends": [
                {
                    "name": "sglang-a",
                    "kind": "sglang",
                    "endpoint": "http://127.0.0.1:3009/v1",
                    "models": [PRIMARY],
                },
                {
                    "name": "sglang-b",
                    "kind": "sglang",
                    "endpoint": "http://127.0.0.1:3010/v1",
                    "models": [BACKUP],
                },
                {
                    "name": "vllm-c",
                    "kind": "vllm",
                    "endpoint": "http://127.0.0.1:3011/v1",
                    "models": [LAST, BACKUP],
                },
            ],
        },
        "health": {"probe_interval_s": 5, "stale_after_s": 30},
        "verdicts": {"refresh_s": 30, "stale_after_s": 300},
    },
}

NOW = 1_800_000_000.0


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of nested dicts (`over` wins)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def make_policy(over: dict[str, Any] | None = None) -> LoadedPolicy:
    """A LoadedPolicy from BASE_POLICY with `over` merged in, hashed like load_policy does."""
    policy = Policy.model_validate(merge(BASE_POLICY, over or {}))
    return LoadedPolicy.of(policy, "<test>")


def fill_caches(
    caches: RouterCaches,
    *,
    health: dict[str, bool | None] | None = None,
    health_age: dict[str, float] | None = None,
    verdicts: dict[str, bool | None] | None = None,
    verdict_age: dict[str, float] | None = None,
    usage: tuple[int, int] | None = None,
    now: float = NOW,
    identities: dict[str, str] | None = None,
    verdict_identities: dict[str, str] | None = None,
) -> RouterCaches:
    """Health per backend and verdict per model; None = never reported.
    `identities`: the weights each backend reports; `verdict_identities`:
    the weights each model's verdict was formed on.

    Defaults: every backend healthy, every chain model passing, all fresh.
    """
    health = {"sglang-a": True, "sglang-b": True, "vllm-c": True} | (health or {})
    verdicts = dict.fromkeys(CHAIN, True) | (verdicts or {})
    health_age = health_age or {}
    verdict_age = verdict_age or {}
    identities = identities or {}
    caches.set_health(
        CachedHealth(
            name,
            ok,
            now - health_age.get(name, 1.0),
            reason="" if ok else "connection refused",
            identity=identities.get(name, ""),
        )
        for name, ok in health.items()
        if ok is not None
    )
    for model, ok in verdicts.items():
        if ok is not None:
            detail = "" if ok else "p95 latency 2400 ms > 2000 ms"
            caches.set_verdict(
                CachedVerdict(
                    model,
                    ok,
                    now - verdict_age.get(model, 1.0),
                    detail,
                    (verdict_identities or {}).get(model, ""),
                )
            )
    if usage is not None:
        caches.set_usage(CloudUsage(usage[0], usage[1], now - 1.0))
    return caches


class FakeInference(inference_pb2_grpc.InferenceServicer):
    """Answers Health from a table the test controls."""

    def __init__(self) -> None:
        self.healthy: dict[str, bool] = {"sglang-a": True, "sglang-b": True, "vllm-c": True}
        self.calls = 0

    async def Health(self, request, context):
        self.calls += 1
        reply = inference_pb2.HealthReply()
        for name, ok in self.healthy.items():
            b = reply.backends.add(
                backend=name, healthy=ok, reachable=ok, reason="" if ok else "connection refused"
            )
            b.checked_at.GetCurrentTime()
        return reply


class FakeCapsule(capsule_pb2_grpc.CapsuleServicer):
    """Verdicts and usage the test controls; stores the events it receives."""

    def __init__(self) -> None:
        self.passed: dict[str, bool] = dict.fromkeys(CHAIN, True)
        self.usage = capsule_pb2.UsageSummary()
        self.events: list[common_pb2.Event] = []
        self.threshold_requests: list[capsule_pb2.CheckThresholdsRequest] = []

    async def AppendEvents(self, request, context):
        self.events.extend(request.events)
        return capsule_pb2.AppendEventsReply(inserted=len(request.events))

    async def CheckThresholds(self, request, context):
        self.threshold_requests.append(request)
        ok = self.passed.get(request.model, False)
        reply = capsule_pb2.CheckThresholdsReply(passed=ok, model=request.model)
        if not ok:
            reply.failures.add(
                kind=capsule_pb2.THRESHOLD_FAILURE_KIND_PARITY_TOO_LOW,
                message="success parity 60.0% < 85.0%",
                observed=60.0,
                required=85.0,
            )
        return reply

    async def GetUsage(self, request, context):
        if request.mode != common_pb2.ROUTING_MODE_CLOUD:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "router asks for cloud usage only"
            )
        return self.usage


class Peers:
    """Fake Inference and Capsule on their own real gRPC servers.

    Inference serves on a port held for the whole test (tests/ports.py): after
    `stop_inference()` its address refuses connections, and no server started
    later, here or anywhere on the machine, can take the port and answer."""

    def __init__(self) -> None:
        self.inference = FakeInference()
        self.capsule = FakeCapsule()
        self.inference_server: aio.Server | None = None
        self.capsule_server: aio.Server | None = None
        self._inference_port = HeldPort()
        self.inference_addr = self._inference_port.addr
        self.capsule_addr = ""

    async def start(self) -> None:
        self.inference_server, _ = await _serve(
            inference_pb2_grpc.add_InferenceServicer_to_server, self.inference, self.inference_addr
        )
        self.capsule_server, self.capsule_addr = await _serve(
            capsule_pb2_grpc.add_CapsuleServicer_to_server, self.capsule
        )

    async def stop_inference(self) -> None:
        if self.inference_server is not None:
            await self.inference_server.stop(0)
            self.inference_server = None

    async def stop(self) -> None:
        await self.stop_inference()
        if self.capsule_server is not None:
            await self.capsule_server.stop(0)
        self._inference_port.close()

    def events(self, event_type: int) -> list[common_pb2.Event]:
        return [e for e in self.capsule.events if e.type == event_type]


async def _serve(add, servicer, addr: str = "127.0.0.1:0") -> tuple[aio.Server, str]:  # type: ignore[no-untyped-def]
    server = aio.server()  # binds with SO_REUSEPORT (gRPC's default): a held port can be served
    add(servicer, server)
    port = server.add_insecure_port(addr)
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
async def peers() -> AsyncIterator[Peers]:
    p = Peers()
    await p.start()
    yield p
    await p.stop()
