"""clients/examples/agent_client.py, the integration the README shows, against the
four real services on port 0: the shipped broken crate is fixed (by the
compiler's own suggestion, no model needed) and written back with --apply."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from speckit_reflex.bakeoff import copy_tree
from speckit_reflex.demo import DEMO_CRATE

ROOT = Path(__file__).resolve().parents[2]


async def _example(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "clients" / "examples" / "agent_client.py"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 240)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_agent_example_fixes_and_applies(services_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    crate = tmp_path / "crate"
    copy_tree(DEMO_CRATE, crate)
    before = (crate / "src" / "lib.rs").read_text()
    services = await services_factory(["capsule", "inference", "router", "patchloop"])
    addr = services.addr("patchloop")

    code, out, err = await _example(str(crate), "--addr", addr, "--session-id", "agent-1", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["outcome"] == "OUTCOME_FIXED" and result["fixed_by"] == "FIX_SOURCE_COMPILER", (
        result
    )
    assert result["diff"] and not result.get("applied", False)
    assert (crate / "src" / "lib.rs").read_text() == before  # no --apply: the crate is untouched
    assert "build: " in err and "result: OUTCOME_FIXED" in err

    code, out, err = await _example(str(crate), "--addr", addr, "--apply")
    assert code == 0, err
    assert out.startswith("OUTCOME_FIXED")
    assert (crate / "src" / "lib.rs").read_text() != before
    check = await asyncio.to_thread(
        subprocess.run,
        ["cargo", "check", "--offline", "--quiet"],
        cwd=crate,
        capture_output=True,
        text=True,
        env={**os.environ, "CARGO_TARGET_DIR": str(tmp_path / "target")},
    )
    assert check.returncode == 0, check.stderr

    code, out, err = await _example(str(crate), "--addr", addr, "--json")
    assert code == 0 and json.loads(out)["outcome"] == "OUTCOME_ALREADY_CLEAN", err


async def test_agent_example_reports_an_unreachable_service(tmp_path: Path, dead_endpoint) -> None:
    addr = dead_endpoint().addr
    code, _, err = await _example(str(tmp_path), "--addr", addr, "--timeout", "3")
    assert code == 3 and "error: UNAVAILABLE" in err
