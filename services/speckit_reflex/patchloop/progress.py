"""Is a patch progress? The keep-or-revert rule of the loop.

Counting errors is not enough: rustc stops at a parse error before it type
checks, so a patch that breaks the syntax of a crate with three type errors
shows one error, and "3 -> 1" would keep broken code. A patch is kept only
when it leaves no new error, whatever the count says:

- an error is identified by its code and message (line numbers move with
  every edit, so they are not part of it);
- an error after the patch that was not there before is new, unless it
  belongs to a later compiler phase than every error before: rustc reports
  borrow-check errors only once type checking passes, so those appear when
  the earlier errors are fixed and are progress, not regression;
- with no new error, the patch must remove at least one error, or move the
  crate to a later phase.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from speckit_reflex.patchloop.compiler import CompileOutcome
from speckit_reflex.patchloop.diagnostics import Diagnostic

SYNTAX, TYPES, BORROWS = 0, 1, 2
# Borrow-check (MIR) error codes: reported only after type checking passes.
_BORROW_CODES = frozenset(
    {
        "E0373",
        "E0381",
        "E0382",
        "E0384",
        "E0499",
        "E0502",
        "E0503",
        "E0505",
        "E0506",
        "E0507",
        "E0515",
        "E0521",
        "E0594",
        "E0596",
        "E0597",
        "E0712",
        "E0713",
        "E0716",
    }
)
# Borrow-check messages that come without a code.
_BORROW_MESSAGES = ("lifetime may not live long enough", "borrowed data escapes")


def phase(d: Diagnostic) -> int:
    """The compiler phase that reports `d`: parse errors carry no code."""
    if d.code in _BORROW_CODES or (d.code is None and d.message.startswith(_BORROW_MESSAGES)):
        return BORROWS
    return SYNTAX if d.code is None else TYPES


def identity(d: Diagnostic) -> tuple[str, str]:
    return (d.code or "", d.message)


@dataclass(frozen=True)
class Progress:
    """The verdict on one patch: keep it or revert it, and why."""

    kept: bool
    new_errors: tuple[str, ...]
    detail: str


def judge_patch(before: CompileOutcome, after: CompileOutcome) -> Progress:
    """Keep the patch only if it leaves no new error and gets somewhere."""
    n_before, n_after = before.error_count, after.error_count
    if after.result.timed_out:
        return Progress(False, (), f"{n_before} -> ? error(s); the build timed out; reverted")
    old = Counter(identity(d) for d in before.diagnostics.errors)
    latest_before = max((phase(d) for d in before.diagnostics.errors), default=SYNTAX)
    new: list[str] = []
    advanced = False
    seen: Counter[tuple[str, str]] = Counter()
    for d in after.diagnostics.errors:
        key = identity(d)
        seen[key] += 1
        if seen[key] <= old[key]:
            continue
        if phase(d) > latest_before:
            advanced = True  # revealed by fixing the earlier phase
            continue
        new.append(f"{d.code + ': ' if d.code else ''}{d.message}")
    if new:
        shown = "; ".join(new[:3]) + (f" (+{len(new) - 3} more)" if len(new) > 3 else "")
        return Progress(
            False, tuple(new), f"{n_before} -> {n_after} error(s), new: {shown}; reverted"
        )
    if n_after < n_before or advanced:
        return Progress(True, (), f"{n_before} -> {n_after} error(s), none new; kept")
    return Progress(False, (), f"{n_before} -> {n_after} error(s), no progress; reverted")
