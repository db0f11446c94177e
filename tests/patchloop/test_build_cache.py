"""The persistent build cache and the synced scratch copy: warm second runs,
concurrent runs on one workspace, a bounded cache, and a scratch copy that
no build can use to reach the user's tree."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from patchloop_support import (
    RecordingEvents,
    ScriptedInference,
    ScriptedRouter,
    kinds,
    reply,
    run_all,
    tree_digest,
)

from speckit_reflex.patchloop.buildcache import BuildCache, build_profile, cache_key
from speckit_reflex.patchloop.compiler import Compiler
from speckit_reflex.patchloop.core import PatchLoop
from speckit_reflex.patchloop.roots import WorkspaceRoots
from speckit_reflex.patchloop.sandbox import BuildRunner, Sandbox
from speckit_reflex.patchloop.workspace import sync_tree
from speckit_reflex.v1 import patchloop_pb2

pytestmark = pytest.mark.cargo


@pytest.fixture
def cache(tmp_path: Path) -> BuildCache:
    return BuildCache(tmp_path / "cache" / "targets", max_bytes=1 << 30)


@pytest.fixture
def cached_loop(tmp_path: Path, policy, cache: BuildCache):  # type: ignore[no-untyped-def]
    def make(inference=None) -> PatchLoop:  # type: ignore[no-untyped-def]
        return PatchLoop(
            ScriptedRouter(),
            inference or ScriptedInference([reply("{}")]),
            RecordingEvents(),
            Compiler(BuildRunner(Sandbox())),
            policy,
            roots=WorkspaceRoots([tmp_path]),
            scratch_dir=tmp_path,
            cache=cache,
        )

    return make


def first_build(
    events: list[patchloop_pb2.RunEvent],
) -> tuple[patchloop_pb2.CompileStarted, patchloop_pb2.CompileFinished]:
    return kinds(events, "compile_started")[0], kinds(events, "compile_finished")[0]


async def test_second_run_reuses_the_cache(crate, cached_loop, cache: BuildCache) -> None:
    ws = crate("with_dep")
    loop = cached_loop()
    events1, r1 = await run_all(loop, workspace=str(ws))
    events2, r2 = await run_all(loop, workspace=str(ws))
    assert r1.outcome == r2.outcome == patchloop_pb2.OUTCOME_FIXED
    assert r1.fixed_by == r2.fixed_by == patchloop_pb2.FIX_SOURCE_COMPILER
    started1, finished1 = first_build(events1)
    started2, finished2 = first_build(events2)
    assert started1.cache == patchloop_pb2.CACHE_STATE_COLD
    assert finished1.units_built == 1 and finished1.units_fresh == 0  # the dependency, built
    # Second run: same build dir, and cargo itself says the dependency was fresh.
    assert started2.cache == patchloop_pb2.CACHE_STATE_WARM
    assert (finished2.units_fresh, finished2.units_built) == (1, 0)
    assert finished2.error_count == 1  # the copy was brought back to the user's broken file
    assert r2.diff == r1.diff
    info = cache.info()
    assert (info.workspaces, info.slots) == (1, 1) and info.size_bytes > 0


async def test_two_concurrent_runs_on_one_workspace_both_finish_correctly(
    crate, cached_loop, cache: BuildCache
) -> None:
    ws = crate("with_dep")
    loop = cached_loop()
    (events_a, a), (events_b, b) = await asyncio.gather(
        run_all(loop, workspace=str(ws)), run_all(loop, workspace=str(ws))
    )
    for events, result in ((events_a, a), (events_b, b)):
        assert result.outcome == patchloop_pb2.OUTCOME_FIXED, result.reason
        assert first_build(events)[1].error_count == 1
        assert "+    let mut total = 0;" in result.diff
    assert cache.info().slots == 2  # one build dir each, never shared while in use
    # Both slots are free again: the next two runs are warm.
    (events_c, c), (events_d, d) = await asyncio.gather(
        run_all(loop, workspace=str(ws)), run_all(loop, workspace=str(ws))
    )
    assert {first_build(e)[0].cache for e in (events_c, events_d)} == {
        patchloop_pb2.CACHE_STATE_WARM
    }
    assert c.outcome == d.outcome == patchloop_pb2.OUTCOME_FIXED


async def test_a_build_script_cannot_modify_the_user_tree_through_the_scratch(
    crate, cached_loop, cache: BuildCache
) -> None:
    ws = crate("tamper_build")
    before = tree_digest(ws)
    loop = cached_loop()
    for apply in (False, True):  # a fresh copy, then a synced warm one
        events, result = await run_all(loop, workspace=str(ws), apply=apply)
        assert result.outcome == patchloop_pb2.OUTCOME_FIXED, result.reason
        assert "tampered" not in result.diff
    assert result.applied, kinds(events, "note")
    slot_ws = next(cache.root.glob("*/slot-0/ws"))
    # The script did write into the copy it built...
    assert (slot_ws / "Cargo.toml").read_text().endswith("# tampered by build.rs\n")
    # ...and the user's tree has only the fix written back, nothing of the script.
    after = tree_digest(ws)
    assert set(after) == set(before)
    assert {k for k in before if before[k] != after[k]} == {"src/lib.rs"}
    assert "tampered" not in (ws / "src" / "lib.rs").read_text()
    assert "tampered" not in (ws / "Cargo.toml").read_text()


def _tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_sync_copies_sources_only_and_restores_a_tampered_copy(tmp_path: Path) -> None:
    src, dst, manifest = tmp_path / "src", tmp_path / "dst", tmp_path / "manifest.json"
    _tree(
        src,
        {
            "Cargo.toml": "[package]\n",
            "src/lib.rs": "fn a() {}\n",
            "target/debug/big": "x",
            ".git/HEAD": "ref",
            "sub/.git/x": "y",
            "src/gone.rs": "old",
        },
    )
    first = sync_tree(src, dst, manifest)
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file()) == [
        "Cargo.toml",
        "src/gone.rs",
        "src/lib.rs",
    ]
    assert first.copied == 3
    assert os.stat(dst / "src/lib.rs").st_ino != os.stat(src / "src/lib.rs").st_ino

    # A build rewrote a copied file in place (same size, mtime set back), left
    # a file of its own, and swapped a directory for a link elsewhere.
    lib = dst / "src/lib.rs"
    st = lib.stat()
    with open(lib, "r+b") as f:
        f.write(b"fn b")
    os.utime(lib, ns=(st.st_atime_ns, st.st_mtime_ns))
    (dst / "src/generated.rs").write_text("junk")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (dst / "sub").rmdir() if (dst / "sub").exists() else None
    (dst / "sub").symlink_to(elsewhere)
    (src / "src/gone.rs").unlink()
    _tree(src, {"sub/new.rs": "new"})

    again = sync_tree(src, dst, manifest)
    assert lib.read_text() == "fn a() {}\n"
    assert not (dst / "src/generated.rs").exists() and not (dst / "src/gone.rs").exists()
    assert not (dst / "sub").is_symlink() and (dst / "sub/new.rs").read_text() == "new"
    assert not (elsewhere / "new.rs").exists()
    assert again.copied == 2  # lib.rs restored, sub/new.rs added; Cargo.toml untouched
    assert sync_tree(src, dst, manifest).copied == 0


def _fill(cache: BuildCache, workspace: Path, size: int):  # type: ignore[no-untyped-def]
    lease = cache.acquire(workspace, "rustc 1", "dev")
    assert lease is not None
    (lease.target / "blob").write_bytes(b"x" * size)
    return lease


def test_cache_is_bounded_and_evicts_the_least_recently_used_free_slot(tmp_path: Path) -> None:
    cache = BuildCache(tmp_path / "cache", max_bytes=10_000)
    a, b, c = (tmp_path / "ws" / n for n in "abc")
    for ws in (a, b, c):
        ws.mkdir(parents=True)
    lease_a = _fill(cache, a, 4_000)
    lease_a.release()
    cache.account(lease_a)
    held_b = _fill(cache, b, 4_000)  # in use while the cache goes over its bound
    lease_c = _fill(cache, c, 4_000)
    lease_c.release()
    cache.account(lease_c)  # 12 000 bytes > 10 000: the oldest free slot goes
    keys = {p.name for p in cache.root.iterdir()}
    assert cache_key(a, "rustc 1", "dev") not in keys
    assert {cache_key(b, "rustc 1", "dev"), cache_key(c, "rustc 1", "dev")} <= keys
    # A slot in use is never removed, even when it is all that is left to evict.
    cache.max_bytes = 1
    cache.account(lease_c)
    assert (held_b.target / "blob").exists()
    held_b.release()
    cleared = cache.clear()
    assert cleared.busy == 0 and cleared.removed == 1 and cleared.freed_bytes >= 4_000
    assert cache.info().slots == 0


def test_entries_of_workspaces_that_are_gone_are_removed_first(tmp_path: Path) -> None:
    cache = BuildCache(tmp_path / "cache", max_bytes=1 << 30)
    kept, gone = tmp_path / "kept", tmp_path / "gone"
    kept.mkdir()
    gone.mkdir()
    for ws in (gone, kept):
        lease = _fill(cache, ws, 100)
        lease.release()
    gone.rmdir()  # e.g. a bakeoff trial's temporary crate
    assert cache.evict() == 1  # far below the bound, yet the throwaway entry goes
    assert {p.name for p in cache.root.iterdir()} == {cache_key(kept, "rustc 1", "dev")}


def test_clear_keeps_slots_in_use_and_a_busy_workspace_gets_another_slot(tmp_path: Path) -> None:
    cache = BuildCache(tmp_path / "cache", max_bytes=1 << 30, max_slots=2)
    ws = tmp_path / "ws"
    ws.mkdir()
    first = cache.acquire(ws, "t", "dev")
    second = cache.acquire(ws, "t", "dev")
    assert first is not None and second is not None and first.slot != second.slot
    assert cache.acquire(ws, "t", "dev") is None  # every slot busy: the run goes uncached
    second.release()
    done = cache.clear()
    assert (done.removed, done.busy) == (1, 1)
    assert first.slot.is_dir()
    first.release()


def test_key_separates_toolchains_and_profiles() -> None:
    ws = Path("/w")
    assert (
        len(
            {
                cache_key(ws, "rustc 1.95", "dev"),
                cache_key(ws, "rustc 1.96", "dev"),
                cache_key(ws, "rustc 1.95", "release"),
                cache_key(Path("/v"), "rustc 1.95", "dev"),
            }
        )
        == 4
    )
    assert build_profile(["cargo", "check"]) == "dev"
    assert build_profile(["cargo", "build", "--release"]) == "release"
    assert build_profile(["cargo", "check", "--profile", "ci"]) == "ci"
    assert build_profile(["cargo", "check", "--profile=bench"]) == "bench"


async def test_a_fix_is_not_written_over_a_file_the_user_changed_meanwhile(
    crate, cached_loop
) -> None:
    ws = crate("missing_mut")
    user_edit = "// the user's own edit, made while the run waited for the model\n"

    def edit_then_fix(request):  # type: ignore[no-untyped-def]
        (ws / "src" / "lib.rs").write_text(user_edit)
        return reply(
            {
                "edits": [
                    {
                        "file": "src/lib.rs",
                        "line_start": 3,
                        "line_end": 3,
                        "replacement": "    let mut total = 0;",
                    }
                ]
            }
        )

    loop = cached_loop(ScriptedInference([edit_then_fix]))
    events, result = await run_all(loop, workspace=str(ws), apply=True, compiler_fast_path=False)
    assert result.outcome == patchloop_pb2.OUTCOME_FIXED
    assert not result.applied
    assert any("differs from the content the run started from" in n for n in kinds(events, "note"))
    assert (ws / "src" / "lib.rs").read_text() == user_edit


class RendezvousInference:
    """Answers only once `parties` calls are in flight together: calls made
    one run after another would wait forever (bounded here by a timeout)."""

    def __init__(self, parties: int, answer: patchloop_pb2.RunEvent | object):
        self.parties = parties
        self.answer = answer
        self.arrived = 0
        self.all_in = asyncio.Event()

    async def complete(self, request, timeout_s: float):  # type: ignore[no-untyped-def]
        self.arrived += 1
        if self.arrived >= self.parties:
            self.all_in.set()
        await asyncio.wait_for(self.all_in.wait(), 60)
        out = type(self.answer)()
        out.CopyFrom(self.answer)  # type: ignore[attr-defined]
        out.backend, out.model = "local", request.model
        return out


async def _answer_builds_once_both_arrived(root: Path, runs: int) -> None:
    """The other side of crates/rendezvous/build.rs: 'go' once `runs` builds wait."""
    deadline = asyncio.get_running_loop().time() + 120
    while True:
        arrived = await asyncio.to_thread(
            lambda: list(root.glob("*/slot-*/target/debug/build/pl_rendezvous-*/out/arrived"))
        )
        if len(arrived) >= runs:
            for a in arrived:
                (a.parent / "go").write_text("")
            return
        assert asyncio.get_running_loop().time() < deadline, f"only {len(arrived)} build(s) arrived"
        await asyncio.sleep(0.02)  # another process's file: nothing to await


async def test_concurrent_runs_overlap_their_builds_and_their_model_calls(
    crate, tmp_path: Path, cached_loop, cache: BuildCache
) -> None:
    one, two = crate("rendezvous"), tmp_path / "other" / "rendezvous"
    two.parent.mkdir()
    shutil.copytree(one, two)
    fix = reply(
        {
            "edits": [
                {
                    "file": "src/lib.rs",
                    "line_start": 3,
                    "line_end": 3,
                    "replacement": "    let mut total = 0;",
                }
            ]
        }
    )
    inference = RendezvousInference(2, fix)
    loop = cached_loop(inference)
    runs = asyncio.gather(
        *(
            run_all(loop, workspace=str(ws), compiler_fast_path=False, max_attempts=1)
            for ws in (one, two)
        )
    )
    await _answer_builds_once_both_arrived(cache.root, 2)
    for _, result in await runs:
        assert result.outcome == patchloop_pb2.OUTCOME_FIXED, result.reason
    assert inference.arrived == 2


async def test_starting_a_build_never_blocks_the_event_loop(monkeypatch, tmp_path: Path) -> None:
    """Starting a process waits until the child has exec'd (seconds under
    load): here that wait lasts until the event loop itself ends it, so a
    build started on the loop would hold it and fail."""
    release = threading.Event()
    real_popen = subprocess.Popen

    def slow_popen(*args, **kwargs):  # type: ignore[no-untyped-def]
        if not release.wait(30):
            raise AssertionError("the event loop was held while a build started")
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", slow_popen)
    runner = BuildRunner(Sandbox(candidates=[]))
    build = asyncio.create_task(runner.run(["true"], tmp_path, tmp_path / "target", 30))
    await asyncio.sleep(0)  # the build task runs up to its process start
    release.set()
    result = await build
    assert result.returncode == 0 and not result.timed_out


async def test_the_scratch_copy_is_made_off_the_event_loop(monkeypatch, crate, cached_loop) -> None:
    """A copy that lasts until the event loop itself ends it: a copy made on
    the loop would hold it and fail."""
    from speckit_reflex.patchloop import workspace

    started, release = threading.Event(), threading.Event()
    real_sync = workspace.sync_tree

    def slow_sync(*args, **kwargs):  # type: ignore[no-untyped-def]
        started.set()
        if not release.wait(30):
            raise AssertionError("the event loop was held while the workspace was copied")
        return real_sync(*args, **kwargs)

    monkeypatch.setattr(workspace, "sync_tree", slow_sync)
    run = asyncio.create_task(run_all(cached_loop(), workspace=str(crate("missing_mut"))))
    assert await asyncio.get_running_loop().run_in_executor(None, started.wait, 60), (
        "the copy never started"
    )
    release.set()  # only reachable while the copy runs if the loop is free
    _, result = await run
    assert result.outcome == patchloop_pb2.OUTCOME_FIXED
