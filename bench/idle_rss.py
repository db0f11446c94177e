"""Idle resident memory of each service process (target: <= 150 MB each, docs/benchmarks.md).

    .venv/bin/python bench/idle_rss.py [--settle 3]

Starts `speckit serve <service>` for each of the four services alone (as in
containers) on a free 127.0.0.1 port with a temporary SQLite database, waits
for gRPC health SERVING, lets it settle, reads VmRSS from /proc, stops it with
SIGTERM. Also measures `speckit serve all` (the embedded default, one process).
Prints a table and writes bench/results/idle_rss.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from speckit_reflex.clients.ports import pick_port

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("capsule", "inference", "router", "patchloop")
TARGET_MB = 150.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def wait_serving(addr: str, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(addr) as ch:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"service exited with {proc.returncode}")
            try:
                r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                time.sleep(0.2)
    raise RuntimeError(f"{addr} not serving")


def measure(which: str, settle_s: float) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPECKIT_")}
        env["SPECKIT_HOME"] = str(Path(tmp) / ".speckit")
        addrs = {s: f"127.0.0.1:{pick_port()}" for s in SERVICES}
        for s, a in addrs.items():
            env[f"SPECKIT_{s.upper()}_ADDR"] = a
        proc = subprocess.Popen(
            [sys.executable, "-m", "speckit_reflex.cli.main", "serve", which],
            cwd=tmp,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for s in SERVICES if which == "all" else (which,):
                wait_serving(addrs[s], proc)
            time.sleep(settle_s)
            return rss_mb(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settle", type=float, default=3.0, help="seconds idle before reading RSS")
    args = ap.parse_args()
    rows = {which: measure(which, args.settle) for which in (*SERVICES, "all")}
    print(f"{'process':<22}{'idle RSS MB':>12}{'target':>10}  ok")
    for which, mb in rows.items():
        target = TARGET_MB if which != "all" else 4 * TARGET_MB
        print(
            f"{'serve ' + which:<22}{mb:>12.1f}{'<= ' + str(int(target)):>10}  {'yes' if mb <= target else 'NO'}"
        )
    out = ROOT / "bench" / "results" / "idle_rss.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"idle_rss_mb": rows, "target_mb_per_service": TARGET_MB}, indent=2) + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
