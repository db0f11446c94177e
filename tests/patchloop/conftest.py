"""PatchLoop test fixtures: std-only test crates and the loop over in-memory peers."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from patchloop_support import (
    CRATES,
    FIXED_LINE,
    RecordingEvents,
    ScriptedInference,
    ScriptedRouter,
    reply,
)

from speckit_reflex.patchloop.compiler import Compiler
from speckit_reflex.patchloop.core import PatchLoop
from speckit_reflex.patchloop.roots import WorkspaceRoots
from speckit_reflex.patchloop.sandbox import BuildRunner, Sandbox
from speckit_reflex.policy import LoadedPolicy, load_policy


@pytest.fixture
def crate(tmp_path: Path) -> Callable[[str], Path]:
    """Copy a test crate into tmp_path and return its directory."""

    def copy(name: str) -> Path:
        dest = tmp_path / "ws" / name
        shutil.copytree(CRATES / name, dest, ignore=shutil.ignore_patterns("target"))
        return dest

    return copy


@pytest.fixture
def policy() -> LoadedPolicy:
    return load_policy(None)


@pytest.fixture
def make_loop(tmp_path: Path, policy: LoadedPolicy):
    """Build a PatchLoop over in-memory ports and the real sandboxed compiler."""

    def make(
        router=None, inference=None, events=None, pol: LoadedPolicy | None = None, isolation=None
    ) -> tuple[PatchLoop, ScriptedRouter, ScriptedInference, RecordingEvents]:
        router = router or ScriptedRouter()
        inference = inference or ScriptedInference([reply(FIXED_LINE)])
        events = events or RecordingEvents()
        loop = PatchLoop(
            router,
            inference,
            events,
            Compiler(BuildRunner(isolation or Sandbox())),
            pol or policy,
            roots=WorkspaceRoots([tmp_path]),
            scratch_dir=tmp_path,
        )
        return loop, router, inference, events

    return make
