"""`trials --concurrency N` really runs N trials at once, each on its own copy
of its crate, and the run says how long it took and how much it overlapped."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from speckit_reflex.bakeoff import BakeoffRunner, RunOptions, find_suite, load_suite
from speckit_reflex.v1 import capsule_pb2, patchloop_pb2


class GatedPatchLoop:
    """Holds every run until `parties` are in flight together: a runner that
    ran them one at a time would never get past the first (bounded by a timeout)."""

    def __init__(self, parties: int):
        self.parties = parties
        self.in_flight = 0
        self.peak = 0
        self.all_in = asyncio.Event()
        self.workspaces: list[str] = []

    async def run(self, workspace: str, **fields: Any) -> AsyncIterator[patchloop_pb2.RunEvent]:
        self.workspaces.append(workspace)
        assert (Path(workspace) / "Cargo.toml").is_file()
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        if self.in_flight >= self.parties:
            self.all_in.set()
        try:
            await asyncio.wait_for(self.all_in.wait(), 30)
        finally:
            self.in_flight -= 1
        yield patchloop_pb2.RunEvent(
            run_id=fields["task_id"],
            result=patchloop_pb2.RunResult(
                outcome=patchloop_pb2.OUTCOME_FIXED,
                fixed_by=patchloop_pb2.FIX_SOURCE_REFLEX,
                attempts=0,
            ),
        )


class RecordingCapsule:
    def __init__(self) -> None:
        self.runs: list[capsule_pb2.BakeoffRun] = []

    async def upsert_bakeoff_run(self, run: capsule_pb2.BakeoffRun) -> capsule_pb2.BakeoffRun:
        self.runs.append(run)
        return run

    async def record_trials(self, trials: Any) -> capsule_pb2.RecordTrialsReply:
        return capsule_pb2.RecordTrialsReply()

    async def bakeoff_stats(
        self, win: Any = None, bakeoff_run_id: str = ""
    ) -> capsule_pb2.BakeoffStats:
        return capsule_pb2.BakeoffStats()

    async def write_report(
        self, win: Any = None, out_dir: str = "", bakeoff_run_id: str = ""
    ) -> capsule_pb2.WriteReportReply:
        return capsule_pb2.WriteReportReply()


async def test_concurrency_n_runs_n_trials_at_once_each_on_its_own_copy(tmp_path: Path) -> None:
    suite = load_suite(find_suite("reflex_patchloop_v1"))
    tasks = suite.select(limit=8)
    loop, capsule = GatedPatchLoop(parties=4), RecordingCapsule()
    runner = BakeoffRunner(loop, capsule, RunOptions(concurrency=4, scratch_root=tmp_path))
    result = await runner.run(suite, tasks)
    assert result.status == "done" and len(result.trials) == 8
    assert loop.peak == 4  # never more than asked, and really that many
    assert len(set(loop.workspaces)) == 8  # per-task isolation: a copy each
    # and each copy removed after its trial
    assert await asyncio.to_thread(lambda: list(tmp_path.iterdir())) == []
    summary = result.summary_json()
    assert summary["concurrency"] == 4
    assert summary["wall_s"] > 0 and summary["trial_wall_s"] > 0
    assert summary["speedup"] == pytest.approx(
        summary["trial_wall_s"] / summary["wall_s"], rel=0.05
    )
    # The figures go to Capsule with the run (the report reads them there).
    stored = capsule.runs[-1].summary
    assert stored["concurrency"] == 4 and stored["wall_s"] == summary["wall_s"]
