"""constraints.txt is made by scripts/lock.sh (uv pip compile), never by
hand: every requirement of pyproject.toml and scripts/nodeps.in is pinned
there within its range, and rerunning the script changes nothing."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def _pins(text: str) -> dict[str, str]:
    pins = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z0-9._-]+)==(\S+)$", line)
        if m:
            pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


def test_every_requirement_is_pinned_within_its_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [
        *project["dependencies"],
        *project["optional-dependencies"]["llm"],
        *project["optional-dependencies"]["dev"],
    ]
    nodeps = [
        line
        for line in (ROOT / "scripts" / "nodeps.in").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    pins = _pins((ROOT / "constraints.txt").read_text())
    for spec in [*wanted, *nodeps]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{req.name}=={pins[name]} is outside {req.specifier}"
        )
    # The lint and type gate's tools are pinned like everything else.
    assert {"ruff", "mypy", "types-grpcio", "types-protobuf", "types-pyyaml"} <= pins.keys()


def test_lock_script_reproduces_constraints(tmp_path: Path) -> None:
    # uv asks the package index about each name (its cache makes it quick);
    # the pins already in constraints.txt are kept, so the answer is stable.
    out = tmp_path / "constraints.txt"
    proc = subprocess.run(
        ["bash", "scripts/lock.sh"],
        cwd=ROOT,
        env={**os.environ, "LOCK_OUT": str(out)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    current = (ROOT / "constraints.txt").read_text()
    assert _pins(out.read_text()) == _pins(current)
    assert out.read_text() == current, "constraints.txt differs from what scripts/lock.sh makes"
