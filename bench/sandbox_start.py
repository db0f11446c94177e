"""Cost of starting a build in the sandbox: median wall time of `true` run
through BuildRunner with the full sandbox this host gives, against network
and PID namespaces only (the sandbox before the filesystem and capability
layers). Figures go in docs/security.md.

    .venv/bin/python bench/sandbox_start.py [--runs 30]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from speckit_reflex.patchloop.sandbox import BuildRunner, Candidate, Sandbox


async def median_ms(sandbox: Sandbox, runs: int) -> float:
    runner = BuildRunner(sandbox)
    await runner.probe()
    work = Path(tempfile.mkdtemp(prefix="sandbox-bench-"))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = await runner.run(["true"], work, work / "target", timeout_s=30)
        times.append((time.perf_counter() - start) * 1000)
        assert result.returncode == 0, result.stderr
    return statistics.median(times)


async def main(runs: int) -> None:
    full = Sandbox()
    await asyncio.to_thread(full.probe)
    layers = ", ".join(x.name for x in full.layers() if x.active)
    a = await median_ms(full, runs)
    b = await median_ms(
        Sandbox([Candidate(("unshare", "--net", "--pid", "--fork", "--kill-child"))]), runs
    )
    print(f"full sandbox ({layers}): median {a:.1f} ms per build start")
    print(f"network + PID namespaces only: median {b:.1f} ms per build start")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    asyncio.run(main(ap.parse_args().runs))
