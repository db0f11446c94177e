"""Harvest (real services, real cargo, real SQLite): PatchLoop runs under
capture.mode = full_io store the workspace they started from and the fix
they verified; `speckit reflex harvest` turns them into a suite in the
layout of reflex_patchloop_v1, deduplicated by error signature (newest
wins), every task verified in PatchLoop's sandbox and again by the shipped
suite verifier; with capture off it refuses, saying why."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import tomllib
from pathlib import Path
from types import ModuleType

import grpc
import pytest

from speckit_reflex.bakeoff.suite import find_suite, load_suite
from speckit_reflex.clients.capsule import CapsuleClient
from speckit_reflex.clients.channel import ChannelConfig, open_channel
from speckit_reflex.clients.errors import error_of
from speckit_reflex.clients.patchloop import PatchLoopClient
from speckit_reflex.policy import LoadedPolicy, load_policy
from speckit_reflex.v1 import (
    capsule_pb2,
    capsule_pb2_grpc,
    common_pb2,
    patchloop_pb2,
    patchloop_pb2_grpc,
)

from .conftest import run_speckit, speckit_env

pytestmark = [pytest.mark.cargo]

SERVICES = ["capsule", "inference", "router", "patchloop"]
SHIPPED = load_suite(find_suite("reflex_patchloop_v1"))
# Crates rustc's machine-applicable suggestions fix (no model call needed).
COMPILER_FIXED = [t for t in SHIPPED.tasks if t.machine_applicable][:3]


def verifier() -> ModuleType:
    """The shipped suite verifier (bench/verify_suite.py), as a module."""
    path = Path(__file__).resolve().parents[2] / "bench" / "verify_suite.py"
    spec = importlib.util.spec_from_file_location("verify_suite", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def capture_policy(mode: str, **extra: str) -> LoadedPolicy:
    return load_policy(None, environ={"SPECKIT_POLICY__CAPTURE__MODE": mode, **extra})


def copy_task(crate_dir: Path, dest: Path) -> Path:
    shutil.copytree(crate_dir, dest, ignore=shutil.ignore_patterns("target"))
    return dest


async def fix_with_compiler(svc, workspace: Path) -> patchloop_pb2.RunResult:  # type: ignore[no-untyped-def]
    client = PatchLoopClient(svc.ctx.channel("patchloop"))
    _, result = await client.run_to_end(str(workspace), verify_profile="test", max_attempts=1)
    return result


def check_verified(suite_dir: Path, tmp_path: Path) -> None:
    """Every task: broken as captured, fixed by its recorded fix (cargo test
    passes and runs a test), by the shipped suite verifier's own checks."""
    vs = verifier()
    for task in load_suite(suite_dir).tasks:
        work = tmp_path / "verify" / task.id
        work.mkdir(parents=True)
        target = tmp_path / "verify-target"
        assert vs._check_broken(task.id, task.crate_dir, work, target) == []
        assert vs._check_fixed(task.id, task.crate_dir, task.fix_dir, work, target) == []


async def test_harvest_dedups_by_signature_and_writes_verified_tasks(
    services_factory, sqlite_url: str, tmp_path: Path
) -> None:
    svc = await services_factory(
        SERVICES, database_url=sqlite_url, policy=capture_policy("full_io")
    )
    runs: dict[str, list[str]] = {}
    # The first crate twice, in two folders: same errors, same span -> one task, the newer run.
    plan = [COMPILER_FIXED[0], COMPILER_FIXED[0], *COMPILER_FIXED[1:]]
    for i, task in enumerate(plan):
        ws = copy_task(task.crate_dir, tmp_path / "ws" / f"{i}-{task.id}")
        events, result = await PatchLoopClient(svc.ctx.channel("patchloop")).run_to_end(
            str(ws), verify_profile="test", max_attempts=1
        )
        assert result.outcome == patchloop_pb2.OUTCOME_FIXED, result.reason
        assert result.fixed_by == patchloop_pb2.FIX_SOURCE_COMPILER
        runs.setdefault(task.id, []).append(events[0].run_id)

    env = speckit_env({name: svc.addr(name) for name in SERVICES})
    out = tmp_path / "suites" / "harvest_test"
    run = await asyncio.to_thread(
        run_speckit, ["reflex", "harvest", "--since", "1h", "--out", str(out), "--json"], env, 600
    )
    assert run.code == 0, run.stderr[-3000:]
    doc = run.json()
    assert doc["suite"] == "harvest_test" and len(doc["digest"]) == 64
    assert len(doc["tasks"]) == len(COMPILER_FIXED) and doc["duplicates"] == 1
    by_run = {t["run_id"]: t for t in doc["tasks"]}
    first, second = runs[COMPILER_FIXED[0].id]
    assert second in by_run and first not in by_run, "of one signature the newest run wins"
    assert by_run[second]["replaces"] == [first]
    for t in doc["tasks"]:
        assert t["fixed_by"] == "compiler" and t["error_codes"] and t["date"]
        assert t["verify_profile"] == "test"

    # The suite on disk: reflex_patchloop_v1's layout, provenance beside it.
    manifest = tomllib.loads((out / "manifest.toml").read_text())
    assert manifest["suite"]["name"] == "harvest_test"
    assert {t["id"] for t in manifest["task"]} == {t["id"] for t in doc["tasks"]}
    assert all(t["machine_applicable"] for t in manifest["task"])
    provenance = json.loads((out / "harvest.json").read_text())
    assert [t["run_id"] for t in provenance["tasks"]] == [t["run_id"] for t in doc["tasks"]]
    # Each captured crate is the shipped broken crate, and its fix makes cargo test pass.
    for t in doc["tasks"]:
        shipped = next(s for s in COMPILER_FIXED if s.id in runs and t["run_id"] in runs[s.id])
        task_dir = out / "tasks" / t["id"]
        for src in shipped.crate_dir.rglob("*.rs"):
            rel = src.relative_to(shipped.crate_dir)
            assert (task_dir / "crate" / rel).read_text() == src.read_text()
        assert list((task_dir / "fix").rglob("*.rs"))
    check_verified(out, tmp_path)


async def test_harvest_refuses_when_capture_was_off(
    services_factory, sqlite_url: str, tmp_path: Path
) -> None:
    svc = await services_factory(SERVICES, database_url=sqlite_url, policy=capture_policy("hash"))
    ws = copy_task(COMPILER_FIXED[0].crate_dir, tmp_path / "ws" / "one")
    assert (await fix_with_compiler(svc, ws)).outcome == patchloop_pb2.OUTCOME_FIXED
    env = speckit_env({name: svc.addr(name) for name in SERVICES})
    out = tmp_path / "suites" / "nothing"
    run = await asyncio.to_thread(
        run_speckit, ["reflex", "harvest", "--since", "1h", "--out", str(out)], env, 120
    )
    assert run.code == 1
    assert "harvest refused: capture.mode is 'hash'" in run.stderr
    assert "full_io" in run.stderr
    assert not out.exists()


async def test_check_patch_builds_only_captured_workspaces_and_rejects_hostile_patches(
    services_factory, sqlite_url: str, tmp_path: Path
) -> None:
    svc = await services_factory(
        SERVICES, database_url=sqlite_url, policy=capture_policy("full_io")
    )
    task = COMPILER_FIXED[0]
    ws = copy_task(task.crate_dir, tmp_path / "ws" / "one")
    client = PatchLoopClient(svc.ctx.channel("patchloop"))
    events, result = await client.run_to_end(str(ws), verify_profile="test", max_attempts=1)
    assert result.outcome == patchloop_pb2.OUTCOME_FIXED
    run_id = events[0].run_id
    # The capture stores the fix's diff as the run's result carried it.
    stored = await CapsuleClient(svc.ctx.channel("capsule")).get_run_capture(run_id)
    assert stored.fixed and stored.fixed_by == "compiler"
    assert result.diff and stored.diff == result.diff

    broken = await client.check_patch(run_id)
    assert broken.patch_applied and not broken.compiles and broken.error_count >= 1
    fixed = await client.check_patch(run_id, recorded_fix=True)
    assert fixed.compiles and fixed.verified and fixed.verify_profile == "test"
    # A candidate's patch is planned by the loop's own rules: no way out of the copy.
    escape = json.dumps({"edits": [{"file": "../../escape.rs", "search": "fn", "replace": "fn"}]})
    rejected = await client.check_patch(run_id, patch_json=escape)
    assert not rejected.patch_applied and rejected.patch_rejected.startswith("path_escape")
    assert not rejected.compiles
    garbage = await client.check_patch(run_id, patch_json="not json")
    assert not garbage.patch_applied and garbage.patch_rejected.startswith("invalid_json")

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.check_patch("no-such-run")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    stub = patchloop_pb2_grpc.PatchLoopStub(svc.ctx.channel("patchloop"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CheckPatch(
            patchloop_pb2.CheckPatchRequest(run_id=run_id, build_profile="sh -c id")
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Above the policy's cap, refused as Run refuses it: naming the field.
    cap = capture_policy("full_io").policy.patchloop.max_build_timeout_s
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CheckPatch(
            patchloop_pb2.CheckPatchRequest(run_id=run_id, build_timeout_s=cap + 1)
        )
    refused = error_of(err.value)
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.message.startswith("build_timeout_s:")
    assert refused.reason == common_pb2.ERROR_REASON_INVALID_FIELD
    assert refused.metadata["field"] == "build_timeout_s"
    assert not (tmp_path / "escape.rs").exists() and not (tmp_path / "ws" / "escape.rs").exists()


async def test_bakeoff_trials_are_not_captured(
    services_factory, sqlite_url: str, tmp_path: Path
) -> None:
    """A trial's crate is a suite task already: harvesting it back would feed
    a suite into itself."""
    svc = await services_factory(
        SERVICES, database_url=sqlite_url, policy=capture_policy("full_io")
    )
    ws = copy_task(COMPILER_FIXED[0].crate_dir, tmp_path / "ws" / "trial")
    client = PatchLoopClient(svc.ctx.channel("patchloop"))
    _, result = await client.run_to_end(
        str(ws), verify_profile="test", max_attempts=1, bakeoff_run_id="bakeoff-1", task_id="t"
    )
    assert result.outcome == patchloop_pb2.OUTCOME_FIXED
    # The capture would have been stored before the result was streamed.
    captures, _ = await CapsuleClient(svc.ctx.channel("capsule")).all_run_captures()
    assert captures == []


def add_file_named_in_latin1(ws: Path) -> None:
    with open(os.path.join(os.fsencode(ws), b"notes-\xff.txt"), "wb") as f:
        f.write(b"plain text\n")


async def test_a_file_name_that_is_not_utf8_is_left_out_of_the_capture(
    services_factory, sqlite_url: str, tmp_path: Path
) -> None:
    """Whoever controls a workspace (or its build script, in the scratch copy)
    can name a file with bytes that are not UTF-8: protobuf strings cannot
    carry them, and the capture's message failed to build. The file is left
    out like a binary one; the run is fixed and its capture stored."""
    svc = await services_factory(
        SERVICES, database_url=sqlite_url, policy=capture_policy("full_io")
    )
    ws = copy_task(COMPILER_FIXED[0].crate_dir, tmp_path / "ws" / "odd")
    add_file_named_in_latin1(ws)
    events, result = await PatchLoopClient(svc.ctx.channel("patchloop")).run_to_end(
        str(ws), verify_profile="test", max_attempts=1
    )
    assert result.outcome == patchloop_pb2.OUTCOME_FIXED, result.reason
    got = await CapsuleClient(svc.ctx.channel("capsule")).get_run_capture(events[0].run_id)
    assert got.fixed and got.files
    assert not any(f.path.startswith("notes-") for f in got.files)


async def test_one_capture_patchloop_refuses_is_skipped_not_the_whole_harvest(
    services_factory, sqlite_url: str, tmp_path: Path
) -> None:
    """Captures are stored by whoever holds the token: one that CheckPatch
    refuses (a build profile the policy lacks) is skipped with the answer as
    its reason, and the other runs are harvested."""
    svc = await services_factory(
        SERVICES, database_url=sqlite_url, policy=capture_policy("full_io")
    )
    ws = copy_task(COMPILER_FIXED[0].crate_dir, tmp_path / "ws" / "real")
    assert (await fix_with_compiler(svc, ws)).outcome == patchloop_pb2.OUTCOME_FIXED
    capsule = CapsuleClient(svc.ctx.channel("capsule"))
    planted = capsule_pb2.RunCapture(run_id="planted", build_profile="sh -c id")
    planted.files.add(path="Cargo.toml", content='[package]\nname = "p"\nversion = "0.1.0"\n')
    planted.files.add(path="src/lib.rs", content="pub fn f() -> u32 { 1u8 }\n")
    planted.errors.add(code="E0599", message="planted", file="src/lib.rs", line=1)
    await capsule.put_run_capture(planted)
    fix = capsule_pb2.RunCapture(run_id="planted", fixed=True, fixed_by="reflex")
    fix.fix_files.add(path="src/lib.rs", content="pub fn f() -> u32 { 1 }\n")
    await capsule.put_run_capture(fix)

    env = speckit_env({name: svc.addr(name) for name in SERVICES})
    out = tmp_path / "suites" / "mixed"
    run = await asyncio.to_thread(
        run_speckit, ["reflex", "harvest", "--since", "1h", "--out", str(out), "--json"], env, 600
    )
    assert run.code == 0, run.stderr[-3000:]
    doc = run.json()
    assert len(doc["tasks"]) == 1 and doc["tasks"][0]["run_id"] != "planted"
    (skip,) = [s for s in doc["skipped"] if s["run_id"] == "planted"]
    assert "INVALID_ARGUMENT" in skip["reason"] and "build_profile" in skip["reason"], skip


@pytest.mark.parametrize("token", ["", "wrong-token"])
async def test_capture_rpcs_need_the_token(services_factory, sqlite_url: str, token: str) -> None:
    """The capture RPCs hold workspaces' sources, and CheckPatch builds them:
    without the services' token each is UNAUTHENTICATED; with it, answered."""
    svc = await services_factory(
        SERVICES, database_url=sqlite_url, policy=capture_policy("full_io"), auth_token="t0ken"
    )
    capture = capsule_pb2.RunCapture(run_id="r")
    capture.files.add(path="src/lib.rs", content="x")
    async with open_channel(ChannelConfig(svc.addr("capsule"), token=token)) as ch:
        stub = capsule_pb2_grpc.CapsuleStub(ch)
        for call in (
            stub.PutRunCapture(capture, timeout=10),
            stub.ListRunCaptures(capsule_pb2.ListRunCapturesRequest(), timeout=10),
            stub.GetRunCapture(capsule_pb2.GetRunCaptureRequest(run_id="r"), timeout=10),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    async with open_channel(ChannelConfig(svc.addr("patchloop"), token=token)) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await patchloop_pb2_grpc.PatchLoopStub(ch).CheckPatch(
                patchloop_pb2.CheckPatchRequest(run_id="r"), timeout=10
            )
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # With the token: answered (nothing was stored by the refused calls).
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await PatchLoopClient(svc.ctx.channel("patchloop")).check_patch("r")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
