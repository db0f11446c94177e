"""The keep-or-revert rule on diagnostics shaped as rustc reports them."""

from __future__ import annotations

from speckit_reflex.patchloop.compiler import CompileOutcome
from speckit_reflex.patchloop.diagnostics import BuildDiagnostics, Diagnostic
from speckit_reflex.patchloop.progress import judge_patch
from speckit_reflex.patchloop.sandbox import BuildResult


def build(*errors: tuple[str | None, str], timed_out: bool = False) -> CompileOutcome:
    diags = [Diagnostic(level="error", message=m, code=c, spans=()) for c, m in errors]
    return CompileOutcome(
        BuildResult(("cargo", "check"), 101, "", "", 1.0, timed_out), BuildDiagnostics(diags)
    )


TYPE = ("E0308", "mismatched types")
FIELD = ("E0609", "no field `hieght` on type `&Rect`")
PARSE = (None, "mismatched closing delimiter: `}`")
BORROW = ("E0502", "cannot borrow `v` as mutable because it is also borrowed as immutable")


def test_parse_error_after_type_errors_is_a_regression_though_the_count_drops():
    p = judge_patch(build(TYPE, FIELD, FIELD), build(PARSE))
    assert not p.kept and p.new_errors == ("mismatched closing delimiter: `}`",)


def test_fewer_errors_and_none_new_is_kept():
    assert judge_patch(build(TYPE, FIELD, FIELD), build(FIELD, FIELD)).kept


def test_a_new_type_error_is_a_regression():
    p = judge_patch(build(FIELD, FIELD), build(TYPE))
    assert not p.kept and p.new_errors == ("E0308: mismatched types",)


def test_borrow_errors_revealed_by_fixing_type_errors_are_progress_whatever_the_count():
    assert judge_patch(build(TYPE), build(BORROW, BORROW)).kept


def test_no_change_and_timeouts_are_reverted():
    assert not judge_patch(build(TYPE), build(TYPE)).kept
    assert not judge_patch(build(TYPE, TYPE), build(TYPE, timed_out=True)).kept
