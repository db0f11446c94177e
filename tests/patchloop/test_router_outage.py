"""An unreachable Router is an error of the run, not a refusal: real PatchLoop
and Capsule services, the Router's address a dead endpoint (tests/ports.py)."""

from __future__ import annotations

from pathlib import Path

from patchloop_support import tree_digest

from speckit_reflex.clients.capsule import CapsuleClient
from speckit_reflex.clients.patchloop import PatchLoopClient
from speckit_reflex.v1 import common_pb2, patchloop_pb2
from tests.waiting import eventually

LR = common_pb2.EVENT_TYPE_LOOP_RESULT


async def loop_results(capsule: CapsuleClient, run_id: str) -> list[common_pb2.Event]:
    """The run's LoopResult events once one has reached Capsule (PatchLoop
    delivers events in the background)."""

    async def probe() -> list[common_pb2.Event]:
        return [e for e in await capsule.all_events(run_id=run_id) if e.type == LR]

    return await eventually(probe, what=f"a LoopResult event of {run_id} in Capsule")


async def test_a_run_whose_router_is_down_ends_in_error_not_refused(
    crate, services_factory, dead_endpoint, tmp_path: Path
) -> None:
    router = dead_endpoint()  # connections refused for the whole test
    svc = await services_factory(
        ["capsule", "patchloop"],
        database_url=f"sqlite:///{tmp_path / 'outage.db'}",
        router_addr=router.addr,
    )
    ws = crate("field_typo")
    before = tree_digest(ws)
    client = PatchLoopClient(svc.ctx.channel("patchloop"))
    events, result = await client.run_to_end(
        str(ws), run_id="router-down", apply=True, compiler_fast_path=False, timeout_s=120
    )

    assert result.outcome == patchloop_pb2.OUTCOME_ERROR, result
    assert result.reason.startswith("router_unavailable: UNAVAILABLE: "), result.reason
    assert not any(ev.WhichOneof("kind") == "routing" for ev in events)
    assert tree_digest(ws) == before
    # Capsule records the run as an error with its reason: no refusal to skew the data.
    (recorded,) = await loop_results(CapsuleClient(svc.ctx.channel("capsule")), "router-down")
    assert recorded.payload["outcome"] == "error"
    assert (recorded.reason, recorded.success) == (result.reason, False)
