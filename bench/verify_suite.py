#!/usr/bin/env python3
"""Verify a reflex bakeoff suite of broken Rust crates (Python 3.11, stdlib only).

For every task listed in ``<suite>/manifest.toml`` this checks that

1. ``tasks/<id>/crate/`` really is broken: a fresh copy fails
   ``cargo check --offline --message-format=json`` with at least one
   error-level diagnostic located in one of the crate's own source files;
2. the reference fix really works: a fresh copy of ``crate/`` with ``fix/``
   laid over it passes ``cargo test --offline`` and runs at least one test;
3. the manifest and the ``tasks/`` folders match one-to-one, and every task
   is laid out as the suite README describes (std-only, own workspace,
   unique package name, entry file present, fix only touches non-test code).

Library use::

    from verify_suite import verify_suite
    problems = verify_suite(Path("clients/speckit_reflex/bakeoff/suites/reflex_patchloop_v1"), Path("/tmp/rp-target"))
    assert problems == []

Command line::

    python3 bench/verify_suite.py [SUITE_DIR] [--target-dir DIR] [--json]
        [--jobs N] [--task ID ...] [--check-machine-applicable]

Progress goes to stderr; the result (a list of problems, or a JSON object with
``--json``) goes to stdout. The exit status is 0 when there are no problems.

``--check-machine-applicable`` additionally applies, in one pass, the
MachineApplicable suggestions that rustc attaches to the error diagnostics of
each broken crate and checks that the manifest's ``machine_applicable`` flag says
truthfully whether that alone makes ``cargo test`` pass.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CATEGORIES = frozenset(
    {
        "type_mismatch",
        "borrow_move",
        "lifetimes",
        "missing_import_or_item",
        "trait_bounds",
        "wrong_arity",
        "mutability",
        "option_result",
        "pattern_exhaustiveness",
        "misc",
    }
)
DIFFICULTIES = frozenset({"easy", "medium", "hard"})
TASK_FIELDS: dict[str, type] = {
    "id": str,
    "category": str,
    "difficulty": str,
    "description": str,
    "entry": str,
    "machine_applicable": bool,
}
ID_RE = re.compile(r"^[a-z][a-z0-9_]*$")
DEFAULT_JOBS = 2
CARGO_TIMEOUT_S = 600
MA_ROUNDS = 1  # one `cargo check` + apply pass: the suggestion must fix the crate by itself
_TEST_RESULT_RE = re.compile(r"^test result: (\w+)\. (\d+) passed; (\d+) failed", re.MULTILINE)
_print_lock = threading.Lock()


def _log(msg: str) -> None:
    with _print_lock:
        print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- static checks


def _load_manifest(suite_dir: Path, problems: list[str]) -> list[dict]:
    path = suite_dir / "manifest.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        problems.append(f"manifest: {path} not found")
        return []
    except tomllib.TOMLDecodeError as e:
        problems.append(f"manifest: cannot parse {path}: {e}")
        return []
    suite = data.get("suite")
    if not isinstance(suite, dict):
        problems.append("manifest: missing [suite] table")
    else:
        if suite.get("name") != suite_dir.name:
            problems.append(
                f"manifest: [suite] name {suite.get('name')!r} != folder name {suite_dir.name!r}"
            )
        if not isinstance(suite.get("version"), int) or isinstance(suite.get("version"), bool):
            problems.append("manifest: [suite] version must be an integer")
        if not isinstance(suite.get("description"), str) or not suite.get("description"):
            problems.append("manifest: [suite] description must be a non-empty string")
    tasks = data.get("task")
    if not isinstance(tasks, list) or not tasks:
        problems.append("manifest: no [[task]] entries")
        return []
    good: list[dict] = []
    seen: set[str] = set()
    for i, t in enumerate(tasks):
        tid = t.get("id") if isinstance(t.get("id"), str) else f"<task #{i + 1}>"
        ok = True
        for field, typ in TASK_FIELDS.items():
            if not isinstance(t.get(field), typ):
                problems.append(f"{tid}: manifest field {field!r} missing or not a {typ.__name__}")
                ok = False
        extra = set(t) - set(TASK_FIELDS)
        if extra:
            problems.append(f"{tid}: unknown manifest fields {sorted(extra)}")
        if not ok:
            continue
        if not ID_RE.match(tid):
            problems.append(f"{tid}: id must match {ID_RE.pattern}")
            ok = False
        if tid in seen:
            problems.append(f"{tid}: duplicate task id")
            ok = False
        seen.add(tid)
        if t["category"] not in CATEGORIES:
            problems.append(f"{tid}: unknown category {t['category']!r}")
        if t["difficulty"] not in DIFFICULTIES:
            problems.append(f"{tid}: unknown difficulty {t['difficulty']!r}")
        if not t["description"].strip() or "\n" in t["description"]:
            problems.append(f"{tid}: description must be one non-empty line")
        if ok:
            good.append(t)
    return good


def _rel_files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def _test_section(text: str) -> str | None:
    i = text.find("#[cfg(test)]")
    return None if i < 0 else text[i:]


def _check_task_layout(task: dict, task_dir: Path, package_names: dict[str, str]) -> list[str]:
    tid = task["id"]
    problems: list[str] = []
    crate, fix = task_dir / "crate", task_dir / "fix"
    for sub in (crate, fix):
        if not sub.is_dir():
            problems.append(f"{tid}: missing folder {sub.relative_to(task_dir)}/")
    if problems:
        return problems
    for p in task_dir.rglob("target"):
        if p.is_dir():
            problems.append(
                f"{tid}: build output folder {p.relative_to(task_dir)} must not be in the suite"
            )
    cargo_toml = crate / "Cargo.toml"
    try:
        cargo = tomllib.loads(cargo_toml.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        problems.append(f"{tid}: cannot read crate/Cargo.toml: {e}")
        cargo = {}
    name = cargo.get("package", {}).get("name")
    if not isinstance(name, str):
        problems.append(f"{tid}: crate/Cargo.toml has no package name")
    elif name in package_names:
        problems.append(f"{tid}: package name {name!r} also used by task {package_names[name]}")
    else:
        package_names[name] = tid
    if cargo and cargo.get("package", {}).get("edition") != "2021":
        problems.append(f'{tid}: crate/Cargo.toml edition must be "2021"')
    if cargo and not isinstance(cargo.get("workspace"), dict):
        problems.append(f"{tid}: crate/Cargo.toml needs an empty [workspace] table")
    for key in ("dependencies", "dev-dependencies", "build-dependencies", "target"):
        if cargo.get(key):
            problems.append(f"{tid}: crate/Cargo.toml must not declare [{key}] (std-only suite)")
    if not (crate / task["entry"]).is_file():
        problems.append(f"{tid}: entry {task['entry']} not found in crate/")
    if not any(
        "#[test]" in p.read_text(encoding="utf-8", errors="replace") for p in crate.rglob("*.rs")
    ):
        problems.append(f"{tid}: crate has no #[test] function")
    fix_files = _rel_files(fix)
    if not fix_files:
        problems.append(f"{tid}: fix/ is empty")
    for rel in fix_files:
        if rel.parts[0] == "tests" or rel.name == "Cargo.toml":
            problems.append(f"{tid}: fix/{rel} must not change tests or Cargo.toml")
            continue
        orig = crate / rel
        new_text = (fix / rel).read_text(encoding="utf-8")
        if not orig.is_file():
            continue  # a fix may add a file
        old_text = orig.read_text(encoding="utf-8")
        if old_text == new_text:
            problems.append(f"{tid}: fix/{rel} is identical to crate/{rel}")
        if _test_section(old_text) != _test_section(new_text):
            problems.append(
                f"{tid}: fix/{rel} changes the #[cfg(test)] section (bug must be in non-test code)"
            )
    return problems


# --------------------------------------------------------------------------- cargo runs


def _copy_crate(src: Path, dst: Path) -> None:
    # shutil.copy, not copy2: the copies must get fresh mtimes. Cargo does not hash the
    # absolute path of a root package and records its sources relative to the package
    # root, so with preserved (old) mtimes a copy of a broken crate could be taken as
    # "fresh" against artifacts an earlier run built from a fixed copy of the same package.
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("target"), copy_function=shutil.copy)


def _cargo(args: list[str], cwd: Path, target_dir: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["CARGO_TARGET_DIR"] = str(target_dir)
    env["CARGO_TERM_COLOR"] = "never"
    env["RUST_BACKTRACE"] = "0"
    env.pop("RUSTFLAGS", None)
    env.pop("CARGO_BUILD_RUSTFLAGS", None)
    return subprocess.run(
        ["cargo", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=CARGO_TIMEOUT_S
    )


def _diagnostics(stdout: str) -> list[dict]:
    out = []
    for line in stdout.splitlines():
        if not line.startswith("{"):
            continue
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if msg.get("reason") == "compiler-message":
            out.append(msg["message"])
    return out


def _own_errors(diags: list[dict]) -> list[dict]:
    """Error diagnostics whose primary span lies in a crate source file (not the summary line)."""
    errs = []
    for d in diags:
        if d.get("level") != "error" or d.get("message", "").startswith("aborting due to"):
            continue
        if any(
            s.get("is_primary") and not os.path.isabs(s.get("file_name", "/"))
            for s in d.get("spans", [])
        ):
            errs.append(d)
    return errs


def _tail(text: str, n: int = 25) -> str:
    lines = text.strip().splitlines()
    return "\n    ".join(lines[-n:])


def _check_broken(tid: str, crate: Path, work: Path, target_dir: Path) -> list[str]:
    dst = work / "broken"
    _copy_crate(crate, dst)
    r = _cargo(["check", "--offline", "--message-format=json"], dst, target_dir)
    errs = _own_errors(_diagnostics(r.stdout))
    if r.returncode == 0:
        return [f"{tid}: broken crate passes `cargo check` (it must fail)"]
    if not errs:
        return [
            f"{tid}: `cargo check` failed without an error diagnostic in the crate's sources:\n    "
            + _tail(r.stderr)
        ]
    return []


def _check_fixed(tid: str, crate: Path, fix: Path, work: Path, target_dir: Path) -> list[str]:
    dst = work / "fixed"
    _copy_crate(crate, dst)
    shutil.copytree(fix, dst, dirs_exist_ok=True, copy_function=shutil.copy)
    r = _cargo(["test", "--offline"], dst, target_dir)
    if r.returncode != 0:
        return [
            f"{tid}: `cargo test` fails with the reference fix:\n    "
            + _tail(r.stdout + "\n" + r.stderr)
        ]
    passed = sum(int(m.group(2)) for m in _TEST_RESULT_RE.finditer(r.stdout))
    if passed < 1:
        return [f"{tid}: `cargo test` ran no tests with the reference fix"]
    return []


def _apply_machine_applicable(root: Path, diags: list[dict]) -> int:
    """Apply MachineApplicable suggestions of error diagnostics; returns how many were applied."""
    edits: dict[Path, list[tuple[int, int, str]]] = {}
    for d in _own_errors(diags):
        for child in d.get("children", []):
            spans = [
                s
                for s in child.get("spans", [])
                if s.get("suggested_replacement") is not None
                and s.get("suggestion_applicability") == "MachineApplicable"
            ]
            if not spans or any(os.path.isabs(s["file_name"]) for s in spans):
                continue
            solution = [
                (root / s["file_name"], s["byte_start"], s["byte_end"], s["suggested_replacement"])
                for s in spans
            ]
            ok = True
            for path, start, end, rep in solution:
                for s0, e0, r0 in edits.get(path, []):
                    if (s0, e0, r0) == (start, end, rep):
                        continue  # the same edit suggested twice
                    if (start < e0 and s0 < end) or (start == s0 and (start == end or s0 == e0)):
                        ok = False  # overlaps an edit already taken
            if ok:
                for path, start, end, rep in solution:
                    lst = edits.setdefault(path, [])
                    if (start, end, rep) not in lst:
                        lst.append((start, end, rep))
    count = 0
    for path, lst in edits.items():
        data = path.read_bytes()
        for start, end, rep in sorted(lst, key=lambda e: (e[0], e[1]), reverse=True):
            data = data[:start] + rep.encode("utf-8") + data[end:]
            count += 1
        path.write_bytes(data)
    return count


def _machine_applicable_fixes(tid: str, crate: Path, work: Path, target_dir: Path) -> bool:
    dst = work / "autofix"
    _copy_crate(crate, dst)
    for _ in range(MA_ROUNDS):
        r = _cargo(["check", "--offline", "--message-format=json"], dst, target_dir)
        if r.returncode == 0:
            break
        if _apply_machine_applicable(dst, _diagnostics(r.stdout)) == 0:
            return False
    return _cargo(["test", "--offline"], dst, target_dir).returncode == 0


# --------------------------------------------------------------------------- driver


class _TargetSlots:
    """Hands each concurrently running task its own subfolder of the shared target dir.

    Cargo locks a whole target dir per build, so two workers on literally the same
    folder would run one after the other; one subfolder per worker keeps them parallel
    while everything stays under the one target dir the caller passed in.
    """

    def __init__(self, target_dir: Path, n: int) -> None:
        self._free = [target_dir / f"worker{i}" for i in range(n)]
        self._lock = threading.Lock()

    def take(self) -> Path:
        with self._lock:
            return self._free.pop()

    def give(self, p: Path) -> None:
        with self._lock:
            self._free.append(p)


def _run(
    suite_dir: Path,
    target_dir: Path,
    *,
    jobs: int = DEFAULT_JOBS,
    only: list[str] | None = None,
    build: bool = True,
    check_ma: bool = False,
) -> list[str]:
    suite_dir = Path(suite_dir).resolve()
    target_dir = Path(target_dir).resolve()
    problems: list[str] = []
    tasks = _load_manifest(suite_dir, problems)
    tasks_root = suite_dir / "tasks"
    on_disk = {p.name for p in tasks_root.iterdir() if p.is_dir()} if tasks_root.is_dir() else set()
    listed = {t["id"] for t in tasks}
    for missing in sorted(listed - on_disk):
        problems.append(f"{missing}: listed in manifest.toml but tasks/{missing}/ does not exist")
    for extra in sorted(on_disk - listed):
        problems.append(f"{extra}: tasks/{extra}/ exists but is not listed in manifest.toml")
    tasks = [t for t in tasks if t["id"] in on_disk]
    if only:
        unknown = set(only) - {t["id"] for t in tasks}
        problems.extend(f"{u}: no such task" for u in sorted(unknown))
        tasks = [t for t in tasks if t["id"] in set(only)]

    package_names: dict[str, str] = {}
    runnable = []
    for t in tasks:
        layout = _check_task_layout(t, tasks_root / t["id"], package_names)
        problems.extend(layout)
        if not any(("missing folder" in p or "Cargo.toml" in p) for p in layout):
            runnable.append(t)
    if not build or not runnable:
        return problems

    target_dir.mkdir(parents=True, exist_ok=True)
    jobs = max(1, jobs)
    slots = _TargetSlots(target_dir, jobs)
    done = [0]
    done_lock = threading.Lock()

    def one(t: dict) -> list[str]:
        tid = t["id"]
        task_dir = tasks_root / tid
        t0 = time.monotonic()
        slot = slots.take()
        out: list[str] = []
        try:
            with tempfile.TemporaryDirectory(prefix=f"rp-{tid}-") as tmp:
                work = Path(tmp)
                try:
                    out += _check_broken(tid, task_dir / "crate", work, slot)
                    out += _check_fixed(tid, task_dir / "crate", task_dir / "fix", work, slot)
                    if check_ma:
                        got = _machine_applicable_fixes(tid, task_dir / "crate", work, slot)
                        if got != t["machine_applicable"]:
                            out.append(
                                f"{tid}: manifest says machine_applicable = "
                                f"{str(t['machine_applicable']).lower()}, but applying rustc's "
                                f"MachineApplicable suggestions {'does' if got else 'does not'} "
                                f"make `cargo test` pass"
                            )
                except subprocess.TimeoutExpired as e:
                    out.append(f"{tid}: cargo timed out after {e.timeout}s")
                except OSError as e:
                    out.append(f"{tid}: cannot run cargo: {e}")
        finally:
            slots.give(slot)
        with done_lock:
            done[0] += 1
            n = done[0]
        status = "ok" if not out else f"FAIL ({len(out)} problem{'s' if len(out) > 1 else ''})"
        _log(f"[{n}/{len(runnable)}] {tid}: {status} ({time.monotonic() - t0:.1f}s)")
        return out

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for res in pool.map(one, runnable):
            problems.extend(res)
    return problems


def verify_suite(suite_dir: Path, target_dir: Path) -> list[str]:
    """Verify every task of the suite in `suite_dir`; returns problems (empty list = all good).

    Builds go under `target_dir` (shared by all tasks; one subfolder per worker).
    """
    return _run(Path(suite_dir), Path(target_dir), jobs=DEFAULT_JOBS)


def check_machine_applicable(suite_dir: Path, target_dir: Path) -> list[str]:
    """Like verify_suite, and also check each task's `machine_applicable` flag against rustc."""
    return _run(Path(suite_dir), Path(target_dir), jobs=DEFAULT_JOBS, check_ma=True)


def main(argv: list[str] | None = None) -> int:
    suites = Path(__file__).resolve().parent.parent / "clients/speckit_reflex/bakeoff/suites"
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "suite_dir",
        nargs="?",
        type=Path,
        default=suites / "reflex_patchloop_v1",
        help="suite folder (default: the packaged reflex_patchloop_v1, "
        "clients/speckit_reflex/bakeoff/suites/)",
    )
    ap.add_argument(
        "--target-dir",
        type=Path,
        default=None,
        help="shared CARGO_TARGET_DIR (default: a temporary folder, removed afterwards)",
    )
    ap.add_argument(
        "--jobs", type=int, default=DEFAULT_JOBS, help="tasks verified in parallel (default 2)"
    )
    ap.add_argument(
        "--task",
        action="append",
        dest="tasks",
        metavar="ID",
        help="only verify this task (repeatable)",
    )
    ap.add_argument(
        "--static-only", action="store_true", help="only check manifest and layout, run no cargo"
    )
    ap.add_argument(
        "--check-machine-applicable",
        action="store_true",
        help="also check the manifest's machine_applicable flags by applying rustc's suggestions",
    )
    ap.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = ap.parse_args(argv)

    tmp = None
    target = args.target_dir
    if target is None:
        tmp = tempfile.mkdtemp(prefix="rp-suite-target-")
        target = Path(tmp)
    t0 = time.monotonic()
    try:
        problems = _run(
            args.suite_dir,
            target,
            jobs=args.jobs,
            only=args.tasks,
            build=not args.static_only,
            check_ma=args.check_machine_applicable,
        )
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    seconds = round(time.monotonic() - t0, 1)
    try:
        n_tasks = len(tomllib.loads((args.suite_dir / "manifest.toml").read_text()).get("task", []))
    except (OSError, tomllib.TOMLDecodeError):
        n_tasks = 0
    _log(f"{n_tasks} tasks, {len(problems)} problem(s), {seconds}s")
    if args.json:
        print(
            json.dumps(
                {
                    "suite": str(args.suite_dir),
                    "tasks": n_tasks,
                    "ok": not problems,
                    "problems": problems,
                    "seconds": seconds,
                },
                indent=2,
            )
        )
    else:
        for p in problems:
            print(p)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
