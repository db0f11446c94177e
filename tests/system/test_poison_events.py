"""A poison-proof audit trail (docs/reliability.md #19), on PostgreSQL and
SQLite: values the database can never store are refused at the edge with
INVALID_ARGUMENT; an event that slips past an edge anyway goes to its
service's dead-letter file; and every later event of PatchLoop, Router and
Inference still reaches Capsule."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import grpc
import pytest

from speckit_reflex.capsule import migrate
from speckit_reflex.capsule.events import COLUMNS
from speckit_reflex.capsule.store import CapsuleStore, make_engine
from speckit_reflex.clients.capsule import CapsuleClient
from speckit_reflex.clients.inference import InferenceClient
from speckit_reflex.clients.patchloop import PatchLoopClient
from speckit_reflex.errors import InvalidArgument
from speckit_reflex.policy import load_policy
from speckit_reflex.runtime.events import new_event
from speckit_reflex.v1 import common_pb2, router_pb2, router_pb2_grpc
from tests.inference.fakes import FakeModelServer
from tests.system.test_system_reliability import FIXED, KEY_ENV, make_crate, write_policy

NUL_ID = "poison\x00session"
# Incompressible: PostgreSQL compresses a repetitive value before indexing it.
LONG_ID = "".join(uuid.uuid4().hex for _ in range(94))[:3000]
SERVICES = ["capsule", "inference", "router", "patchloop"]


def _decide(session_id: str) -> router_pb2.DecideRequest:
    return router_pb2.DecideRequest(
        stage=common_pb2.STAGE_IMPLEMENT,
        role=common_pb2.ROLE_IMPLEMENTER,
        session_id=session_id,
        attempt=1,
    )


async def _stored(
    capsule: CapsuleClient, session_id: str, want: set[int], timeout_s: float = 20.0
) -> set[int]:
    deadline = time.monotonic() + timeout_s
    while True:
        types = {e.type for e in await capsule.all_events(session_id=session_id)}
        if want <= types or time.monotonic() > deadline:
            return types
        await asyncio.sleep(0.1)


async def test_poison_values_are_refused_or_dead_lettered_and_later_events_still_arrive(
    services_factory, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-test")
    local = await FakeModelServer(
        kind="vllm", models=["local-model"], reply=json.dumps(FIXED)
    ).start()
    try:
        policy = load_policy(
            write_policy(
                tmp_path / "p.toml",
                [("vllm", "vllm", local.base_url)],
                "http://127.0.0.1:9/v1",
                max_failures=2,
            )
        )
        migrate.upgrade_url(db_url)
        svc = await services_factory(SERVICES, database_url=db_url, policy=policy)
        capsule = CapsuleClient(svc.ctx.channel("capsule"))
        router = router_pb2_grpc.RouterStub(svc.ctx.channel("router"))
        inference = InferenceClient(svc.ctx.channel("inference"))

        # 1. At the edge: refused, naming the field.
        for bad in (NUL_ID, LONG_ID):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await router.Decide(_decide(bad), timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.value.details().startswith("session_id: ")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await inference.complete([("user", "hi")], session_id=bad, timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.value.details().startswith("session_id: ")

        # 2. Past the edge (as a bug would let them through): each service's
        # sink gets events the database can never store, in one batch with
        # good ones.
        sinks = {
            "router": svc.servers["router"].service.events,
            "inference": svc.servers["inference"].service.sink,
            "patchloop": svc.servers["patchloop"].service.sink,
        }
        poison_ids: dict[str, list[str]] = {}
        for name, sink in sinks.items():
            out_of_range = new_event(common_pb2.EVENT_TYPE_AUDIT, session_id="before")
            out_of_range.time.seconds = 2**40
            poison = [
                new_event(common_pb2.EVENT_TYPE_AUDIT, session_id=NUL_ID),
                new_event(common_pb2.EVENT_TYPE_AUDIT, session_id=LONG_ID),
                out_of_range,
            ]
            poison_ids[name] = [e.id for e in poison]
            for ev in [
                new_event(common_pb2.EVENT_TYPE_AUDIT, session_id="before"),
                *poison,
                new_event(common_pb2.EVENT_TYPE_AUDIT, session_id="before"),
            ]:
                sink.emit(ev)
        for sink in sinks.values():
            assert await sink.flush(20.0)
            assert sink.dead_lettered == 3 and sink.dropped == 0
        for name, ids in poison_ids.items():
            lines = [
                json.loads(x)
                for x in (tmp_path / ".speckit" / "dead-letter" / f"{name}-events.jsonl")
                .read_text()
                .splitlines()
            ]
            assert [x["event"]["id"] for x in lines] == ids
            assert all(x["code"] == "INVALID_ARGUMENT" and x["reason"] for x in lines)
        assert len(await capsule.all_events(session_id="before")) == 6

        # 3. Every later event of the three services is delivered.
        await router.Decide(_decide("after"), timeout=10)
        reply = await inference.complete([("user", "hi")], session_id="after", timeout=10)
        assert reply.content
        _, result = await PatchLoopClient(svc.ctx.channel("patchloop")).run_to_end(
            str(make_crate(tmp_path / "ws")), session_id="after", timeout_s=120
        )
        assert result.attempts >= 1
        types = await _stored(
            capsule,
            "after",
            {
                common_pb2.EVENT_TYPE_ROUTING_DECISION,
                common_pb2.EVENT_TYPE_LLM_CALL,
                common_pb2.EVENT_TYPE_PATCH_ATTEMPT,
                common_pb2.EVENT_TYPE_LOOP_RESULT,
            },
        )
        assert {
            common_pb2.EVENT_TYPE_ROUTING_DECISION,
            common_pb2.EVENT_TYPE_LLM_CALL,
            common_pb2.EVENT_TYPE_PATCH_ATTEMPT,
            common_pb2.EVENT_TYPE_LOOP_RESULT,
        } <= types
    finally:
        await local.stop()


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("session_id", LONG_ID),
        ("session_id", NUL_ID),
        ("prompt_tokens", 2**32 - 1),
        ("attempt", 2**64),
    ],
)
def test_a_row_the_database_refuses_is_invalid_argument_not_unavailable(
    db_url: str, column: str, value
) -> None:
    """Below the event checks: the store maps a permanent database error to
    INVALID_ARGUMENT (the sinks then dead-letter), never to UNAVAILABLE (retried forever)."""
    from speckit_reflex.capsule.events import event_to_row

    migrate.upgrade_url(db_url)
    store = CapsuleStore(make_engine(db_url), auto_create_schema=False)
    try:
        row = list(event_to_row(new_event(common_pb2.EVENT_TYPE_AUDIT), 0, "none", 0))
        row[COLUMNS.index(column)] = value
        if db_url.startswith("sqlite") and value != 2**64:
            pytest.skip("SQLite stores these; the event checks refuse them first")
        with pytest.raises(InvalidArgument) as info:
            store.append_events([tuple(row)])
        assert "the database refused the data" in info.value.message
    finally:
        store.close()
