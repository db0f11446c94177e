"""Done-when of the harvest loop, on the embedded model (real llama.cpp +
SmolLM2, real services, real cargo, real SQLite), capture.mode = full_io:

1. PatchLoop runs on a few broken crates: some fixed by rustc's suggestions
   (the compiler fast path), some handed to the model;
2. `speckit reflex harvest` turns the fixed ones into a suite, and each task
   is verified by the shipped suite verifier (broken as captured, fixed by its
   recorded fix);
3. `speckit reflex trials --suite-dir` runs that suite; the run, its verdict
   and its report name the suite and its digest;
4. `speckit reflex replay` resends the captured model calls to the same model
   and writes a report with pass / fail / not_judged against the thresholds.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from speckit_reflex.bakeoff.readiness import wait_for_reflex_route
from speckit_reflex.bakeoff.suite import find_suite, load_suite
from speckit_reflex.cli.demo_stack import DEMO_POLICY, render_policy
from speckit_reflex.clients.capsule import CapsuleClient
from speckit_reflex.clients.patchloop import PatchLoopClient
from speckit_reflex.clients.router import RouterClient
from speckit_reflex.policy import load_policy
from speckit_reflex.v1 import common_pb2, patchloop_pb2

from .conftest import run_speckit, speckit_env
from .test_harvest import check_verified

pytestmark = [pytest.mark.llm, pytest.mark.cargo]

SERVICES = ["capsule", "inference", "router", "patchloop"]
MODEL = "smollm2-135m-instruct"
SHIPPED = load_suite(find_suite("reflex_patchloop_v1"))
COMPILER_FIXED = [t for t in SHIPPED.tasks if t.machine_applicable][:2]
MODEL_TASKS = [t for t in SHIPPED.tasks if not t.machine_applicable][:2]


def loop_policy(tmp_path: Path, llm_port: int):  # type: ignore[no-untyped-def]
    path = tmp_path / "model_policy.toml"
    path.write_text(render_policy(DEMO_POLICY.read_text(), llm_port))
    return load_policy(
        path,
        environ={
            "SPECKIT_POLICY__CAPTURE__MODE": "full_io",
            "SPECKIT_POLICY__PATCHLOOP__MAX_ATTEMPTS": "1",
            "SPECKIT_POLICY__PATCHLOOP__MAX_TOKENS": "192",
            "SPECKIT_POLICY__ROUTING__HEALTH__PROBE_INTERVAL_S": "2",
        },
    )


def read(path: str) -> str:
    return Path(path).read_text()


async def test_capture_harvest_trials_and_replay_on_the_embedded_model(
    llama_server, services_factory, sqlite_url: str, tmp_path: Path
) -> None:
    svc = await services_factory(
        SERVICES, database_url=sqlite_url, policy=loop_policy(tmp_path, llama_server.port)
    )
    await wait_for_reflex_route(RouterClient(svc.ctx.channel("router")), timeout_s=120)
    patchloop = PatchLoopClient(svc.ctx.channel("patchloop"))

    # 1. The agent's runs: two crates rustc fixes, two that go to the model.
    results: dict[str, patchloop_pb2.RunResult] = {}
    run_ids: dict[str, str] = {}
    for task in [*COMPILER_FIXED, *MODEL_TASKS]:
        ws = tmp_path / "agent" / task.id
        shutil.copytree(task.crate_dir, ws, ignore=shutil.ignore_patterns("target"))
        events, result = await patchloop.run_to_end(
            str(ws),
            verify_profile="test",
            force_mode=common_pb2.ROUTING_MODE_REFLEX,
            timeout_s=900,
        )
        results[task.id], run_ids[task.id] = result, events[0].run_id
    for task in COMPILER_FIXED:
        assert results[task.id].fixed_by == patchloop_pb2.FIX_SOURCE_COMPILER
    for task in MODEL_TASKS:
        assert results[task.id].attempts == 1, "the model was asked"
    fixed = {tid for tid, r in results.items() if r.outcome == patchloop_pb2.OUTCOME_FIXED}
    capsule = CapsuleClient(svc.ctx.channel("capsule"))
    calls = await capsule.all_events(type=common_pb2.EVENT_TYPE_LLM_CALL)
    assert {c.run_id for c in calls} >= {run_ids[t.id] for t in MODEL_TASKS}
    assert all(c.capture_mode == "full_io" and c.request.fields for c in calls)

    # 2. Harvest: every fixed run (and only those) becomes a verified task.
    env = speckit_env({name: svc.addr(name) for name in SERVICES})
    suite_dir = tmp_path / "suites" / "harvest_week"
    run = await asyncio.to_thread(
        run_speckit,
        ["reflex", "harvest", "--since", "1h", "--out", str(suite_dir), "--json"],
        env,
        900,
    )
    assert run.code == 0, run.stderr[-3000:]
    harvest = run.json()
    assert {t["run_id"] for t in harvest["tasks"]} == {run_ids[t] for t in fixed}
    by_run = {t["run_id"]: t for t in harvest["tasks"]}
    for task in COMPILER_FIXED:
        assert by_run[run_ids[task.id]]["fixed_by"] == "compiler"
    check_verified(suite_dir, tmp_path)

    # 3. Trials on the harvested suite: named with its digest everywhere.
    report_dir = tmp_path / ".speckit" / "eval"
    run = await asyncio.to_thread(
        run_speckit,
        [
            "reflex",
            "trials",
            "--suite-dir",
            str(suite_dir),
            "--mode",
            "reflex",
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
    trials = run.json()
    assert trials["suite"] == "harvest_week" and trials["suite_digest"] == harvest["digest"]
    assert trials["planned"] == trials["finished"] == len(harvest["tasks"])
    assert trials["verdict"]["suite"] == "harvest_week"
    assert trials["verdict"]["suite_digest"] == harvest["digest"]
    report = json.loads(read(trials["report"]["json"]))
    assert report["bakeoff_run"]["suite_digest"] == harvest["digest"]
    assert harvest["digest"][:12] in read(trials["report"]["markdown"])

    # 4. Replay the captured calls against the same model.
    run = await asyncio.to_thread(
        run_speckit,
        [
            "reflex",
            "replay",
            "--model",
            MODEL,
            "--since",
            "1h",
            "--report-dir",
            str(report_dir),
            "--json",
        ],
        env,
        1800,
    )
    assert run.code == 0, run.stderr[-3000:]
    replay = run.json()
    recorded, candidate = replay["figures"]["recorded"], replay["figures"]["candidate"]
    assert candidate["calls"] == recorded["calls"] >= len(MODEL_TASKS)
    assert candidate["replies"] >= 1 and candidate["p95_latency_ms"] > 0
    assert candidate["prompt_tokens"] > 0
    patch_calls = [c for c in replay["calls"] if c["schema"] == "rust_patch"]
    assert patch_calls, "the loop's calls are patch requests"
    judged = [
        c for c in patch_calls if not (c["candidate"]["patch"] or "").startswith("not_judged")
    ]
    assert judged, "first-attempt patch requests of captured runs are judged by building"
    for c in judged:
        patch = c["candidate"]["patch"]
        assert patch in {"verified", "builds", "fails"} or patch.startswith("rejected: "), c
    # The figures count the calls of the report.
    assert candidate["patches_judged"] == len(judged)
    assert candidate["patches_verified"] == sum(
        c["candidate"]["patch"] == "verified" for c in judged
    )
    # The verdict judges those figures: each threshold on its figure, the whole
    # a pass only if every threshold passes, too few samples never a pass.
    verdict = replay["verdict"]
    results = {r["name"]: r for r in verdict["results"]}
    assert results["p95_latency_ms"]["observed"] == candidate["p95_latency_ms"]
    assert (
        results["json_schema_compliance_percent"]["observed"] == candidate["json_compliance_rate"]
    )
    min_samples = replay["thresholds"]["min_samples"]
    for r in verdict["results"]:
        if r["status"] != "not_judged":
            met = (
                r["observed"] < r["required"]
                if r["comparison"] == "<"
                else r["observed"] >= r["required"]
            )
            assert r["status"] == ("pass" if met else "fail"), r
    if candidate["replies"] < min_samples:
        assert results["p95_latency_ms"]["status"] == "not_judged", results
    statuses = {r["status"] for r in verdict["results"]}
    expected = (
        "fail" if "fail" in statuses else "not_judged" if "not_judged" in statuses else "pass"
    )
    assert (verdict["status"], verdict["passed"]) == (expected, expected == "pass"), verdict
    report_json = Path(replay["report"]["json"])
    assert report_json.parent == report_dir and report_json.name.startswith("reflex-replay-")
    assert "# Reflex replay report" in read(replay["report"]["markdown"])
