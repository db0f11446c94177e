"""Ctrl-C during `speckit reflex trials` keeps the partial results: the
finished trials stay recorded, the run is marked "interrupted" in Capsule,
the report is still written, and the command exits 130."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from speckit_reflex.cli.demo_stack import render_policy
from speckit_reflex.clients.capsule import CapsuleClient
from speckit_reflex.demo import DEMO_POLICY
from speckit_reflex.policy import load_policy

from .conftest import speckit_env

pytestmark = [pytest.mark.llm, pytest.mark.cargo]

SERVICES = ["capsule", "inference", "router", "patchloop"]


def _interrupt_after_first_trial(
    args: list[str], env: dict[str, str], timeout_s: float
) -> tuple[int, str, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "speckit_reflex.cli.main", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    for line in proc.stderr:
        seen.append(line)
        # A per-trial line: "  reflex tm_... fixed|gave_up (...)".
        if line.strip().startswith("reflex ") and "attempt(s)" in line:
            proc.send_signal(signal.SIGINT)
            break
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("no trial finished in time:\n" + "".join(seen))
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, "".join(seen) + err


async def test_ctrl_c_keeps_partial_results_and_marks_the_run_interrupted(
    llama_server, services_factory, sqlite_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "model_policy.toml"
    path.write_text(render_policy(DEMO_POLICY.read_text(), llama_server.port))
    policy = load_policy(
        path,
        environ={
            "SPECKIT_POLICY__PATCHLOOP__MAX_ATTEMPTS": "1",
            "SPECKIT_POLICY__PATCHLOOP__MAX_TOKENS": "96",
            "SPECKIT_POLICY__ROUTING__HEALTH__PROBE_INTERVAL_S": "2",
        },
    )
    svc = await services_factory(SERVICES, database_url=sqlite_url, policy=policy)
    env = speckit_env({name: svc.addr(name) for name in SERVICES})

    code, out, err = await asyncio.to_thread(
        _interrupt_after_first_trial,
        [
            "reflex",
            "trials",
            "--mode",
            "reflex",
            "--limit",
            "4",
            "--report-dir",
            str(tmp_path / ".speckit" / "eval"),
            "--scratch-dir",
            str(tmp_path / "bakeoff"),
            "--json",
        ],
        env,
        1200,
    )
    assert code == 130, err[-3000:]
    doc = json.loads(out)
    assert doc["status"] == "interrupted"
    assert doc["planned"] == 4
    assert 1 <= doc["finished"] < 4
    assert "trials kept" in err

    report = json.loads(await asyncio.to_thread(Path(doc["report"]["json"]).read_text))
    assert report["bakeoff_run"]["status"] == "interrupted"
    assert report["bakeoff_run"]["summary"]["finished"] == doc["finished"]
    trials = [t for t in report["trials"]]
    assert sum(t["tasks"] for t in trials) == doc["finished"]
    # The partial run is in Capsule as stored, not just in the printout.
    capsule = CapsuleClient(svc.ctx.channel("capsule"))
    stats = await capsule.bakeoff_stats(bakeoff_run_id=doc["bakeoff_run_id"])
    assert stats.reflex.total_attempts >= doc["finished"]
