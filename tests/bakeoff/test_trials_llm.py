"""Done-when: `speckit reflex trials --suite reflex_patchloop_v1 --mode reflex
--limit 10` runs against the embedded model (real llama.cpp + SmolLM2, real
services, real cargo), and `speckit reflex bakeoff --json` then shows those
attempts in the seed's JSON shape.

Slow: one patch attempt per task and a short reply budget bound the time.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from speckit_reflex.cli.demo_stack import render_policy
from speckit_reflex.demo import DEMO_POLICY
from speckit_reflex.policy import load_policy

from .conftest import run_speckit, speckit_env

pytestmark = [pytest.mark.llm, pytest.mark.cargo]

SERVICES = ["capsule", "inference", "router", "patchloop"]
SEED_KEYS = {"total_attempts", "success_rate", "json_compliance_rate", "p95_latency_ms"}


def trial_policy(tmp_path: Path, llm_port: int):  # type: ignore[no-untyped-def]
    path = tmp_path / "model_policy.toml"
    path.write_text(render_policy(DEMO_POLICY.read_text(), llm_port))
    return load_policy(
        path,
        environ={
            "SPECKIT_POLICY__PATCHLOOP__MAX_ATTEMPTS": "1",
            "SPECKIT_POLICY__PATCHLOOP__MAX_TOKENS": "192",
            "SPECKIT_POLICY__ROUTING__HEALTH__PROBE_INTERVAL_S": "2",
        },
    )


async def test_trials_against_the_embedded_model_then_bakeoff_shows_them(
    llama_server, services_factory, sqlite_url: str, tmp_path: Path
) -> None:
    svc = await services_factory(
        SERVICES, database_url=sqlite_url, policy=trial_policy(tmp_path, llama_server.port)
    )
    env = speckit_env({name: svc.addr(name) for name in SERVICES})
    report_dir = tmp_path / ".speckit" / "eval"

    run = await asyncio.to_thread(
        run_speckit,
        [
            "reflex",
            "trials",
            "--suite",
            "reflex_patchloop_v1",
            "--mode",
            "reflex",
            "--limit",
            "10",
            "--report-dir",
            str(report_dir),
            "--scratch-dir",
            str(tmp_path / "bakeoff"),
            "--json",
        ],
        env,
        1800,
    )
    assert run.code == 0, run.stderr[-3000:]
    doc = run.json()
    assert doc["status"] == "done"
    assert doc["modes"] == ["reflex"]
    assert doc["planned"] == doc["finished"] == 10
    trials = doc["trials"]
    assert len({t["task_id"] for t in trials}) == 10
    for t in trials:
        assert t["mode"] == "reflex"
        assert t["outcome"] in {"fixed", "gave_up"}, t
        assert t["model"] == "smollm2-135m-instruct" and t["backend"] == "local", t
        assert t["attempts"] == 1
        assert t["fixed_by"] in {"reflex", "unspecified"}
        # The weights llama.cpp reports (/props), recorded with the trial.
        assert t["model_identity"].startswith("llamacpp:") and ".gguf" in t["model_identity"], t
    [backend] = doc["backends"]
    assert backend["tasks"] == 10
    assert backend["fixed"] == sum(t["success"] for t in trials)
    assert backend["model_calls"] == sum(t["model_calls"] for t in trials) >= 10
    # Progress went to stderr with live counts; stdout is only the JSON.
    assert "reflex" in run.stderr and "fixed" in run.stderr

    # The report Capsule wrote for this run.
    report = json.loads(await asyncio.to_thread(Path(doc["report"]["json"]).read_text))
    assert await asyncio.to_thread(Path(doc["report"]["markdown"]).is_file)
    assert Path(doc["report"]["json"]).parent == report_dir
    assert report["bakeoff_run"]["id"] == doc["bakeoff_run_id"]
    assert report["bakeoff_run"]["status"] == "done"
    assert report["stats"]["reflex"]["total_attempts"] == 10
    # The run's verdict is formed from its trials, on the weights they ran on.
    verdict = report["verdict"]
    assert (
        verdict["bakeoff_run_ids"] == [doc["bakeoff_run_id"]] and verdict["reflex"]["tasks"] == 10
    )
    assert verdict["reflex"]["model_identity"] == trials[0]["model_identity"]
    assert verdict["reflex"]["pass_at_1"] == round(100 * backend["fixed"] / 10, 1)

    bakeoff = await asyncio.to_thread(
        run_speckit, ["reflex", "bakeoff", "--since", "1h", "--json"], env
    )
    assert bakeoff.code == 0, bakeoff.stderr
    stats = bakeoff.json()
    assert stats["period"] == "1h"
    assert SEED_KEYS <= set(stats["reflex"]) and SEED_KEYS <= set(stats["cloud"])
    assert stats["reflex"]["total_attempts"] == 10
    assert stats["reflex"]["success_rate"] == round(100 * backend["fixed"] / 10, 1)
    assert stats["reflex"]["p95_latency_ms"] > 0
    assert stats["cloud"]["total_attempts"] == 0
