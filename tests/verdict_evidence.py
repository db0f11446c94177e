"""Bakeoff evidence for tests that need a verdict: one recorded bakeoff run
with a trial per task and mode, as the bakeoff runner records it."""

from __future__ import annotations

import uuid

from speckit_reflex.clients.capsule import CapsuleClient
from speckit_reflex.v1 import capsule_pb2, common_pb2

SUITE = "reflex_patchloop_v1"


def trial(
    run_id: str,
    task: int,
    mode: int,
    model: str,
    *,
    success: bool = True,
    latency_ms: float = 300.0,
    identity: str = "",
) -> capsule_pb2.Trial:
    return capsule_pb2.Trial(
        id=str(uuid.uuid4()),
        bakeoff_run_id=run_id,
        task_id=f"task{task}",
        mode=mode,  # type: ignore[arg-type]
        model=model,
        success=success,
        attempts=1,
        first_attempt_success=success,
        json_valid=True,
        model_calls=1,
        replies=1,
        schema_valid_replies=1,
        call_latency_ms=[latency_ms],
        model_identity=identity,
    )


async def record_bakeoff(
    capsule: CapsuleClient,
    model: str,
    tasks: int,
    *,
    latency_ms: float = 300.0,
    identity: str = "",
    cloud_model: str = "deepseek-chat",
    cloud: bool = True,
) -> str:
    """A finished run where `model` (reflex) fixes every task fast, and cloud too; returns its id."""
    run = capsule_pb2.BakeoffRun(
        id=str(uuid.uuid4()), suite=SUITE, suite_version=1, mode="both", status="done"
    )
    run.started_at.GetCurrentTime()
    await capsule.upsert_bakeoff_run(run)
    trials = [
        trial(
            run.id,
            i,
            common_pb2.ROUTING_MODE_REFLEX,
            model,
            latency_ms=latency_ms,
            identity=identity,
        )
        for i in range(tasks)
    ]
    if cloud:
        trials += [
            trial(run.id, i, common_pb2.ROUTING_MODE_CLOUD, cloud_model, latency_ms=2500.0)
            for i in range(tasks)
        ]
    await capsule.record_trials(trials)
    return run.id
