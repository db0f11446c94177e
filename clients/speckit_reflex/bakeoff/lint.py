"""Diff quality beyond the tests: `cargo clippy`'s correctness lints.

SPEC-KIT-978 measures diff quality as "tests passing, lint passing". A fixed
crate passes lint when clippy reports no warning of the `clippy::correctness`
group (code that is outright wrong or useless) that the suite's reference fix
does not have too. Where clippy is not installed the check is not run, and
the result says so: it never passes silently.

Clippy runs here, on the runner's machine, on the runner's own copy of a
suite crate (std-only, no build script), with a time limit and an environment
without API keys or tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from functools import cache
from pathlib import Path

CLIPPY = (
    "cargo",
    "clippy",
    "--offline",
    "--quiet",
    "--message-format=json",
    "--",
    "-A",
    "clippy::all",
    "-W",
    "clippy::correctness",
)
LINT_TIMEOUT_S = 300.0
# What clippy needs of the environment; everything else (keys, tokens) stays out.
_KEEP_ENV = ("PATH", "HOME", "CARGO_HOME", "RUSTUP_HOME", "RUSTUP_TOOLCHAIN", "LANG", "TMPDIR")
PASS, FAIL, NOT_RUN = "pass", "fail", "not_run"


@dataclass(frozen=True)
class LintResult:
    status: str
    detail: str = ""
    new_warnings: tuple[str, ...] = ()

    def describe(self) -> str:
        return self.status + (f": {self.detail}" if self.detail else "")


@cache
def clippy_available() -> bool:
    """Is `cargo clippy` installed here?"""
    if shutil.which("cargo") is None:
        return False
    try:
        probe = subprocess.run(["cargo", "clippy", "--version"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def _env(target_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in _KEEP_ENV}
    env.update(CARGO_TARGET_DIR=str(target_dir), CARGO_TERM_COLOR="never")
    return env


async def correctness_warnings(
    crate: Path, target_dir: Path, timeout_s: float = LINT_TIMEOUT_S
) -> Counter[str]:
    """`clippy::correctness` warnings of a crate, as "code: message" counts."""
    proc = await asyncio.create_subprocess_exec(
        *CLIPPY,
        cwd=crate,
        env=_env(target_dir),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except (TimeoutError, asyncio.CancelledError):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        await proc.wait()
        raise
    found: Counter[str] = Counter()
    for line in out.decode(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("reason") != "compiler-message":
            continue
        diag = msg.get("message") or {}
        code = (diag.get("code") or {}).get("code") or ""
        if code.startswith("clippy::"):
            found[f"{code}: {diag.get('message', '')}"] += 1
    return found


async def lint_fix(fixed: Path, reference: Path, target_dir: Path) -> LintResult:
    """Does the fixed crate add correctness warnings the reference fix does not have?"""
    if not clippy_available():
        return LintResult(
            NOT_RUN, "cargo clippy is not installed; diff quality is judged by the tests only"
        )
    try:
        # One target folder each: cargo does not key a root package's
        # artifacts by its path, so a shared one could answer for the other.
        ours = await correctness_warnings(fixed, target_dir / "fixed")
        theirs = await correctness_warnings(reference, target_dir / "reference")
    except TimeoutError:
        return LintResult(NOT_RUN, f"cargo clippy did not finish within {LINT_TIMEOUT_S:g} s")
    new = tuple(sorted((ours - theirs).elements()))
    if new:
        return LintResult(
            FAIL, f"{len(new)} new clippy::correctness warning(s): {'; '.join(new[:3])}", new
        )
    return LintResult(PASS)
