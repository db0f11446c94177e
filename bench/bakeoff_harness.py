"""Bakeoff harness and admin CLI benchmark: what the harness itself costs,
apart from the compiler and the model.

    .venv/bin/python bench/bakeoff_harness.py [--events 20000] [--trials 300] [--cli-runs 5]

Starts Capsule in-process on a temporary SQLite file on 127.0.0.1 (port 0),
stores --events PatchAttempt events (reflex and cloud), then measures

* the harness's per-trial bookkeeping: one RecordTrials call per finished
  trial, as the runner makes it (p50/p95 ms, sequential);
* per-backend figures over --trials trials of 4 model calls each (ms);
* GetBakeoffStats over those events through the client (p50 ms: Capsule's
  own work, for scale beside the CLI figures);
* `speckit reflex bakeoff --json` and `speckit reflex check --exit-code`
  end to end as a user runs them (a fresh process each, wall time p50),
  next to `python -c pass` started the same way, so interpreter start-up on
  this machine is visible beside the command's own cost.

Targets are ours (none is set elsewhere for the harness). Bounded in count;
prints a table and writes bench/results/bakeoff_harness.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from speckit_reflex.bakeoff import figures_by_backend
from speckit_reflex.bakeoff.trial import TrialResult
from speckit_reflex.clients.capsule import CapsuleClient
from speckit_reflex.contract import percentile
from speckit_reflex.policy import load_policy
from speckit_reflex.runtime.bootstrap import start_services
from speckit_reflex.runtime.settings import RuntimeSettings
from speckit_reflex.v1 import capsule_pb2, common_pb2, patchloop_pb2

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {
    "record_trial_p50_ms": 5.0,
    "figures_ms": 50.0,
    "cli_bakeoff_minus_python_ms": 1000.0,
    "cli_check_minus_python_ms": 1000.0,
}


def attempt(i: int) -> common_pb2.Event:
    mode = common_pb2.ROUTING_MODE_REFLEX if i % 4 else common_pb2.ROUTING_MODE_CLOUD
    return common_pb2.Event(
        id=str(uuid.uuid4()),
        type=common_pb2.EVENT_TYPE_PATCH_ATTEMPT,
        mode=mode,  # type: ignore[arg-type]
        model="smollm2" if mode == common_pb2.ROUTING_MODE_REFLEX else "deepseek-chat",
        success=i % 3 == 0,
        json_valid=i % 50 != 0,
        latency_ms=200 + i % 1800,
        attempt=1 + i % 2,
    )


def synthetic_trial(i: int) -> TrialResult:
    t = TrialResult(
        trial_id=str(i), task_id=f"t{i}", category="misc", difficulty="easy", mode="reflex"
    )
    for a in range(1, 5):
        ev = patchloop_pb2.RunEvent(run_id="r", attempt=a)
        c = ev.model_call
        c.backend, c.model, c.schema_valid = "local", "smollm2", a != 3
        c.timing.latency_ms, c.timing.ttft_ms, c.timing.tokens_per_s = 100.0 * a + i % 7, 70.0, 35.0
        c.usage.prompt_tokens, c.usage.cached_tokens = 500, 0 if a == 1 else 450
        t.absorb(ev)
    done = patchloop_pb2.RunEvent(run_id="r")
    done.result.outcome, done.result.attempts = patchloop_pb2.OUTCOME_FIXED, 4  # type: ignore[assignment]
    t.absorb(done)
    return t


def wall(argv: list[str], env: dict[str, str], runs: int) -> tuple[float, int]:
    times, code = [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        code = subprocess.run(argv, env=env, capture_output=True).returncode
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), code


async def main(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="bakeoff-bench-") as tmp:
        settings = RuntimeSettings(
            capsule_addr="127.0.0.1:0",
            database_url=f"sqlite:///{tmp}/b.db",
            home=Path(tmp) / ".speckit",
            grace_s=1.0,
        )
        ctx, servers = await start_services(["capsule"], settings, load_policy(None))
        try:
            capsule = CapsuleClient(ctx.channel("capsule"), timeout_s=120)
            for start in range(0, args.events, 5000):
                await capsule.append_events(
                    [attempt(i) for i in range(start, min(args.events, start + 5000))]
                )
            run = await capsule.upsert_bakeoff_run(
                capsule_pb2.BakeoffRun(suite="bench", mode="reflex", status="running")
            )
            record_ms = []
            for i in range(args.trials):
                proto = synthetic_trial(i).to_proto(run.id)
                t0 = time.perf_counter()
                await capsule.record_trials([proto])
                record_ms.append((time.perf_counter() - t0) * 1000)
            trials = [synthetic_trial(i) for i in range(args.trials)]
            t0 = time.perf_counter()
            figures_by_backend(trials)
            figures_ms = (time.perf_counter() - t0) * 1000

            stats_ms = []
            for _ in range(args.cli_runs):
                t0 = time.perf_counter()
                await capsule.bakeoff_stats()
                stats_ms.append((time.perf_counter() - t0) * 1000)

            env = {k: v for k, v in os.environ.items() if not k.startswith("SPECKIT_")}
            env["SPECKIT_CAPSULE_ADDR"] = ctx.addresses["capsule"]
            py = [sys.executable]
            cli = [sys.executable, "-m", "speckit_reflex.cli.main", "reflex"]
            base_ms, _ = await asyncio.to_thread(wall, [*py, "-c", "pass"], env, args.cli_runs)
            bakeoff_ms, code_b = await asyncio.to_thread(
                wall, [*cli, "bakeoff", "--json"], env, args.cli_runs
            )
            check_ms, code_c = await asyncio.to_thread(
                wall, [*cli, "check", "--exit-code", "--json"], env, args.cli_runs
            )
        finally:
            for s in servers:
                await s.stop(0.5)
            await ctx.close()
    assert code_b == 0, "reflex bakeoff failed"
    return {
        "events": args.events,
        "trials": args.trials,
        "record_trial_p50_ms": round(statistics.median(record_ms), 2),
        "record_trial_p95_ms": round(percentile(record_ms, 0.95), 2),
        "figures_ms": round(figures_ms, 2),
        "rpc_bakeoff_stats_p50_ms": round(statistics.median(stats_ms), 1),
        "python_start_ms": round(base_ms, 1),
        "cli_bakeoff_ms": round(bakeoff_ms, 1),
        "cli_bakeoff_minus_python_ms": round(bakeoff_ms - base_ms, 1),
        "cli_check_ms": round(check_ms, 1),
        "cli_check_minus_python_ms": round(check_ms - base_ms, 1),
        "cli_check_exit_code": code_c,
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--trials", type=int, default=300)
    ap.add_argument("--cli-runs", type=int, default=5)
    args = ap.parse_args()
    figures = asyncio.run(main(args))
    print(f"{'figure':<32} {'value':>10} {'target':>10}")
    for key, value in figures.items():
        target = TARGETS.get(key)
        print(f"{key:<32} {value:>10} {('≤ ' + str(target)) if target else '':>10}")
    out = {
        "figures": figures,
        "targets": TARGETS,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "command": "python bench/bakeoff_harness.py " + " ".join(sys.argv[1:]),
    }
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "bakeoff_harness.json").write_text(
        json.dumps(out, indent=2) + "\n"
    )
