"""Fixtures of the Inference Adapter tests: policies, fake model servers, a
recording Capsule, and the adapter itself on a real gRPC server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from grpc import aio

from speckit_reflex.clients.inference import InferenceClient
from speckit_reflex.policy import LoadedPolicy, Policy
from speckit_reflex.v1 import capsule_pb2, capsule_pb2_grpc, common_pb2
from tests.waiting import eventually

from .fakes import FakeModelServer


def make_policy(**sections: Any) -> LoadedPolicy:
    """A validated policy from nested dicts (the TOML tables)."""
    policy = Policy.model_validate(sections)
    return LoadedPolicy.of(policy, "<test>")


def backends_policy(
    *fakes: tuple[str, str, FakeModelServer],
    model: str = "m",
    cloud: FakeModelServer | None = None,
    local_only: bool = False,
    timeout_ms: int = 5000,
    retries: int = 1,
    health: dict[str, Any] | None = None,
    **reflex: Any,
) -> LoadedPolicy:
    """Reflex backends (name, kind, fake) in order, optionally a fake cloud."""
    routing: dict[str, Any] = {
        "reflex": {
            "enabled": True,
            "model": model,
            "timeout_ms": timeout_ms,
            "backends": [{"name": n, "kind": k, "endpoint": f.base_url} for n, k, f in fakes],
            **reflex,
        },
        "health": {
            "probe_interval_s": 60,
            "stale_after_s": 600,
            "cooldown_s": 30,
            "probe_timeout_ms": 2000,
            **(health or {}),
        },
    }
    if cloud is not None:
        routing["cloud"] = {
            "endpoint": cloud.base_url,
            "model": "deepseek-chat",
            "api_key_env": "TEST_CLOUD_KEY",
        }
    return make_policy(
        routing=routing,
        privacy={"local_only": local_only},
        inference={"max_validation_retries": retries},
    )


@pytest.fixture
async def fake_factory() -> AsyncIterator:
    started: list[FakeModelServer] = []

    async def factory(**kw: Any) -> FakeModelServer:
        fake = await FakeModelServer(**kw).start()
        started.append(fake)
        return fake

    yield factory
    for f in started:
        await f.stop()


class RecordingCapsule(capsule_pb2_grpc.CapsuleServicer):
    """A Capsule that only records what AppendEvents receives."""

    def __init__(self) -> None:
        self.events: list[common_pb2.Event] = []

    async def AppendEvents(self, request, context):  # type: ignore[no-untyped-def]
        self.events.extend(request.events)
        return capsule_pb2.AppendEventsReply(inserted=len(request.events))

    def llm_calls(self) -> list[common_pb2.Event]:
        return [e for e in self.events if e.type == common_pb2.EVENT_TYPE_LLM_CALL]


@pytest.fixture
async def capsule_recorder() -> AsyncIterator[tuple[RecordingCapsule, str]]:
    server = aio.server()
    recorder = RecordingCapsule()
    capsule_pb2_grpc.add_CapsuleServicer_to_server(recorder, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield recorder, f"127.0.0.1:{port}"
    await server.stop(0)


@pytest.fixture
async def adapter(capsule_recorder, services_factory, monkeypatch):  # type: ignore[no-untyped-def]
    """Call with a policy: starts the Inference service; returns (client, recorder, services)."""
    recorder, capsule_addr = capsule_recorder
    monkeypatch.setenv("TEST_CLOUD_KEY", "sk-testcloudkey0123456789abcdef")
    clients: list[InferenceClient] = []

    async def start(policy: LoadedPolicy):  # type: ignore[no-untyped-def]
        svc = await services_factory(["inference"], policy=policy, capsule_addr=capsule_addr)
        client = InferenceClient(svc.ctx.channel("inference"))
        clients.append(client)
        return client, recorder, svc

    yield start


async def wait_for_calls(
    recorder: RecordingCapsule, n: int, timeout_s: float = 30.0
) -> list[common_pb2.Event]:
    """The LLMCall events once at least n arrived (at once when they have: the
    deadline is margin for a loaded machine; the sink sends within 50 ms)."""
    return await eventually(
        recorder.llm_calls,
        lambda calls: len(calls) >= n,
        what=f"{n} LLMCall event(s) in Capsule",
        timeout_s=timeout_s,
    )
