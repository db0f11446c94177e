"""A session's consecutive failures survive a PatchLoop restart: a process
that has not seen the session reads its PatchAttempt record from a real
Capsule service, so escalation after max_failures does not start over."""

from __future__ import annotations

from pathlib import Path

from patchloop_support import (
    FIXED_LINE,
    RecordingEvents,
    ScriptedInference,
    ScriptedRouter,
    kinds,
    reply,
    run_all,
)

from speckit_reflex.clients.capsule import CapsuleClient
from speckit_reflex.patchloop.compiler import Compiler
from speckit_reflex.patchloop.core import PatchLoop
from speckit_reflex.patchloop.ports import CapsuleSessionHistory, SessionHistoryPort
from speckit_reflex.patchloop.roots import WorkspaceRoots
from speckit_reflex.patchloop.sandbox import BuildRunner, Sandbox
from speckit_reflex.policy import load_policy
from speckit_reflex.runtime.events import new_event
from speckit_reflex.v1 import common_pb2, patchloop_pb2


def _attempt(session_id: str, success: bool) -> common_pb2.Event:
    return new_event(
        common_pb2.EVENT_TYPE_PATCH_ATTEMPT,
        session_id=session_id,
        success=success,
        mode=common_pb2.ROUTING_MODE_REFLEX,
        model="local-model",
        latency_ms=10.0,
    )


def _loop(tmp_path: Path, history: SessionHistoryPort) -> tuple[PatchLoop, ScriptedRouter]:
    router = ScriptedRouter(max_failures=2)
    loop = PatchLoop(
        router,
        ScriptedInference([reply(FIXED_LINE)] * 4),
        RecordingEvents(),
        Compiler(BuildRunner(Sandbox())),
        load_policy(None),
        roots=WorkspaceRoots([tmp_path]),
        scratch_dir=tmp_path,
        history=history,
    )
    return loop, router


async def test_a_new_process_continues_the_sessions_count(
    services_factory, crate, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    services = await services_factory(["capsule"])
    channel = services.ctx.channel("capsule")
    capsule = CapsuleClient(channel)
    # Earlier runs of two sessions, served by a PatchLoop that is gone.
    await capsule.append_events(
        [
            _attempt("agent-a", False),
            _attempt("agent-a", False),
            _attempt("agent-b", False),
            _attempt("agent-b", True),
            _attempt("agent-b", False),
        ]
    )

    loop, router = _loop(tmp_path, CapsuleSessionHistory(channel))
    ws = str(crate("field_typo"))  # runs work on scratch copies; without apply it stays broken
    evs, result = await run_all(loop, workspace=ws, session_id="agent-a")
    # Two failures on record = max_failures: the first attempt already goes to cloud.
    assert router.requests[0].consecutive_failures == 2
    assert kinds(evs, "routing")[0].mode == common_pb2.ROUTING_MODE_CLOUD
    assert (
        result.outcome == patchloop_pb2.OUTCOME_FIXED
        and result.fixed_by == patchloop_pb2.FIX_SOURCE_CLOUD
    )
    assert any("2 consecutive failed attempt(s) on record" in n for n in kinds(evs, "note"))

    # A success resets the count: agent-b has one failure since its last success.
    await run_all(loop, workspace=ws, session_id="agent-b")
    assert router.requests[-1].consecutive_failures == 1

    # Once seen, the process's own count is used (the fix above reset agent-a to 0).
    await run_all(loop, workspace=ws, session_id="agent-a")
    assert router.requests[-1].consecutive_failures == 0


async def test_unreadable_history_is_said_and_counts_from_zero(
    crate, tmp_path: Path, dead_endpoint
) -> None:  # type: ignore[no-untyped-def]
    from grpc import aio

    channel = aio.insecure_channel(dead_endpoint().addr)  # nothing listens there
    try:
        loop, router = _loop(tmp_path, CapsuleSessionHistory(channel, timeout_s=1.0))
        evs, result = await run_all(loop, workspace=str(crate("field_typo")), session_id="agent-c")
    finally:
        await channel.close()
    assert router.requests[0].consecutive_failures == 0
    assert result.outcome == patchloop_pb2.OUTCOME_FIXED
    assert any(
        n.startswith("session history unavailable (capsule: UNAVAILABLE")
        for n in kinds(evs, "note")
    )


async def test_a_session_named_after_its_run_is_not_looked_up(crate, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    class Counting:  # a SessionHistoryPort that only counts the questions
        def __init__(self) -> None:
            self.asked = 0

        async def consecutive_failures(self, session_id: str) -> int:
            self.asked += 1
            return 0

    history = Counting()
    loop, router = _loop(tmp_path, history)
    await run_all(loop, workspace=str(crate("field_typo")))  # no session id: the run id stands in
    assert history.asked == 0 and router.requests[0].consecutive_failures == 0
