"""Diff quality by cargo clippy's correctness group, against the reference fix (real cargo clippy)."""

from __future__ import annotations

from pathlib import Path

import pytest

from speckit_reflex.bakeoff import lint
from speckit_reflex.bakeoff.trial import TrialResult

pytestmark = pytest.mark.cargo

CARGO_TOML = '[package]\nname = "linted"\nversion = "0.1.0"\nedition = "2021"\n\n[workspace]\n'


def crate(root: Path, body: str) -> Path:
    (root / "src").mkdir(parents=True)
    (root / "Cargo.toml").write_text(CARGO_TOML)
    (root / "src" / "lib.rs").write_text(body)
    return root


@pytest.mark.skipif(not lint.clippy_available(), reason="cargo clippy is not installed")
async def test_a_fix_with_a_new_correctness_warning_fails_lint(tmp_path: Path):
    reference = crate(tmp_path / "reference", "pub fn same(a: u32, b: u32) -> bool { a == b }\n")
    wrong = crate(tmp_path / "wrong", "pub fn same(a: u32, b: u32) -> bool { let _ = b; a == a }\n")
    good = crate(tmp_path / "good", "pub fn same(a: u32, b: u32) -> bool { b == a }\n")
    failed = await lint.lint_fix(wrong, reference, tmp_path / "target")
    assert failed.status == lint.FAIL and failed.new_warnings == (
        "clippy::eq_op: equal expressions as operands to `==`",
    )
    assert (await lint.lint_fix(good, reference, tmp_path / "target2")).status == lint.PASS
    # A fixed trial whose fix fails lint is not a success.
    trial = TrialResult(
        trial_id="t",
        task_id="x",
        category="misc",
        difficulty="easy",
        mode="reflex",
        outcome="fixed",
        lint=failed,
    )
    assert not trial.success and trial.to_proto("run").lint.startswith(
        "fail: 1 new clippy::correctness"
    )


async def test_without_clippy_lint_is_not_run_and_says_so(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(lint, "clippy_available", lambda: False)
    result = await lint.lint_fix(tmp_path, tmp_path, tmp_path / "target")
    assert result.status == lint.NOT_RUN and "cargo clippy is not installed" in result.detail
    trial = TrialResult(
        trial_id="t",
        task_id="x",
        category="misc",
        difficulty="easy",
        mode="reflex",
        outcome="fixed",
        lint=result,
    )
    assert trial.success and trial.to_json()["lint"].startswith(
        "not_run: cargo clippy is not installed"
    )
