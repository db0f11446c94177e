"""The Router and Inference benchmarks still run end to end (tiny counts).

Speed is not asserted here (that is what the benchmarks are for, on a quiet
machine); this checks that each script starts its real services, measures,
prints every target row with its target, and writes complete JSON, so the
figures in docs/benchmarks.md can always be reproduced.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


# A child of the script lost the port it was told (tests/ports.py: picked ports
# are free only until the child binds them): its own words, or gRPC's.
LOST_PORT = ("already in use", "Failed to bind")


def _run(script: str, out: Path, *args: str) -> str:
    """The script's table; run again (every port picked anew) when a child lost its port."""
    for tries in range(1, 4):
        proc = subprocess.run(
            [sys.executable, str(ROOT / "bench" / script), "--out", str(out), *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=240,
        )
        lost = proc.returncode != 0 and any(w in proc.stderr for w in LOST_PORT)
        if not lost or tries == 3:
            break
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def test_router_benchmark_prints_its_targets(tmp_path: Path) -> None:
    out = tmp_path / "router.json"
    table = _run(
        "router_decide.py", out, "--sequential", "200", "--seconds", "0.5", "--concurrency", "8"
    )
    assert "Decide p50 over gRPC, sequential" in table and "<= 0.7 ms" in table
    assert "decisions/s, 8 in flight" in table and ">= 3,000" in table
    doc = json.loads(out.read_text())
    assert doc["targets"] == {"p50_ms": 0.7, "decisions_per_s": 3000.0}
    for side in (doc["results"], doc["floor"]):
        assert side["sequential_calls"] == 200 and side["errors"] == 0 and side["decisions"] > 0
        assert 0 < side["p50_ms"] <= side["p99_ms"]
        assert side["server_cpu_us_per_call"] > 0 and side["client_cpu_us_per_call"] > 0


def test_inference_benchmark_prints_its_targets(tmp_path: Path) -> None:
    out = tmp_path / "inference.json"
    table = _run(
        "inference_overhead.py",
        out,
        "--calls",
        "40",
        "--warmup",
        "10",
        "--ttft-calls",
        "6",
        "--stream-calls",
        "2",
        "--stream-tokens",
        "6",
        "--frontend-calls",
        "5",
        "--no-litellm",
    )
    for row, target in [
        ("added latency p50", "<= 1 ms"),
        ("added latency p99", "<= 4 ms"),
        ("reflex path added p50", "<= 1.5 ms"),
        ("reflex path added p99", "<= 5 ms"),
        ("stream TTFT added p50", "<= 1 ms"),
        ("stream tokens/s ratio", ">= 0.98"),
    ]:
        line = next(x for x in table.splitlines() if x.startswith(row))
        assert target in line, line
    doc = json.loads(out.read_text())
    assert doc["calls"] == 40 and doc["ttft_calls"] == 6 and doc["stream_calls"] == 2
    for key in (
        "added_p50_ms",
        "added_p99_ms",
        "reflex_added_p50_ms",
        "reflex_added_p99_ms",
        "stream_ttft_added_p50_ms",
        "stream_tps_ratio",
    ):
        assert isinstance(doc[key], float) and math.isfinite(doc[key]), key
    # The OpenAI endpoint's rows, against direct calls (LiteLLM is skipped here).
    assert doc["frontend_calls"] == 5
    for key in ("endpoint_unary_added_p50_ms", "endpoint_ttft_added_p50_ms"):
        assert isinstance(doc[key], float) and math.isfinite(doc[key]), key
    assert "OpenAI endpoint added p50, unary" in table and "endpoint / LiteLLM, TTFT" in table
    # Every adapter call (unary and reflex path with warm-up, TTFT and tokens/s
    # streams with theirs, each request the endpoint answered) reached Capsule
    # as one LLMCall event, and every reflex-path and endpoint decision (plus
    # the readiness checks) as a RoutingDecision.
    endpoint = doc["endpoint_requests"]
    assert endpoint >= 2 * 5 + 1
    assert doc["llm_call_events"] == 2 * (40 + 10) + (6 + 4) + (2 + 2) + endpoint
    assert doc["routing_decision_events"] >= 40 + 10 + endpoint


def test_observability_overhead_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "observability.json"
    table = _run("observability_overhead.py", out, "--calls", "50", "--rounds", "1")
    assert "metrics_added_us" in table and "tracing_added_us" in table
    doc = json.loads(out.read_text())
    for kind in ("off", "metrics", "tracing"):
        assert doc[f"{kind}_cpu_us_per_call"] > 0


@pytest.mark.cargo
def test_warm_workspace_benchmark_prints_its_targets(tmp_path: Path) -> None:
    out = tmp_path / "warm.json"
    table = _run(
        "warm_workspace.py",
        out,
        "--modules",
        "2",
        "--items",
        "2",
        "--warm-runs",
        "2",
        "--concurrent",
        "3",
    )
    for row, target in [
        ("warm first build step / incremental check", "<= 1.5"),
        ("warm total - incremental check (ms)", "<= 1000 ms"),
    ]:
        line = next(x for x in table.splitlines() if x.startswith(row))
        assert target in line, line
    doc = json.loads(out.read_text())
    assert doc["cold_run"]["cache"] == "CACHE_STATE_COLD"
    assert [r["cache"] for r in doc["warm_runs"]] == ["CACHE_STATE_WARM"] * 2
    # Cargo's word: the dependency was fresh in each warm run's first build.
    assert all(r["units_fresh_built"][0] == [1, 0] for r in doc["warm_runs"])
    assert doc["concurrent"]["runs"] == 3 and doc["concurrent"]["all_finished"]
    assert doc["concurrent"]["outcomes"] == ["OUTCOME_FIXED"]
    assert len(doc["bare_check"]["incremental_all_ms"]) == 2


@pytest.mark.cargo
def test_patchloop_benchmark_prints_its_targets(tmp_path: Path) -> None:
    # Its workspaces live in a temporary folder: the benchmark must name it as
    # PatchLoop's workspace root, or every run is refused.
    out = tmp_path / "patchloop.json"
    table = _run("patchloop_bench.py", out, "--runs", "1", "--attempts", "2", "--llm-tasks", "0")
    line = next(x for x in table.splitlines() if x.startswith("overhead per attempt p50 (ms)"))
    assert "<= 20 ms" in line, line
    doc = json.loads(out.read_text())
    assert doc["overhead"]["samples"] == 2 and doc["overhead"]["overhead_p50_ms"] > 0
    assert doc["cache_reuse"] is None
