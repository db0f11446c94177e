"""Every task of the reflex_patchloop_v1 suite is broken as shipped and fixed by
its reference fix (kept apart from what the model sees), checked with cargo."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SUITE = REPO / "clients" / "speckit_reflex" / "bakeoff" / "suites" / "reflex_patchloop_v1"


def _verify_suite_module():  # type: ignore[no-untyped-def]
    # bench/ is not a package: load the verifier from its file.
    spec = importlib.util.spec_from_file_location(
        "verify_suite", REPO / "bench" / "verify_suite.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_manifest_lists_at_least_forty_tasks_with_model_input_apart_from_fix() -> None:
    manifest = tomllib.loads((SUITE / "manifest.toml").read_text(encoding="utf-8"))
    tasks = manifest["task"]
    assert len(tasks) >= 40
    for t in tasks:
        task_dir = SUITE / "tasks" / t["id"]
        # The model is given crate/ only; the reference fix lives beside it.
        assert (task_dir / "crate" / "Cargo.toml").is_file(), t["id"]
        assert any((task_dir / "fix").rglob("*.rs")), t["id"]
        assert not (task_dir / "crate" / "fix").exists(), t["id"]


@pytest.mark.cargo
def test_every_task_is_broken_as_shipped_and_fixed_by_its_reference_fix(tmp_path: Path) -> None:
    verify = _verify_suite_module()
    problems = verify.verify_suite(SUITE, tmp_path / "target")
    assert problems == []
    count = len(tomllib.loads((SUITE / "manifest.toml").read_text(encoding="utf-8"))["task"])
    assert count >= 40
