"""Capsule benchmark: ingest rate into PostgreSQL through batched AppendEvents
(with the service's RSS), and GetBakeoffStats over 1,000,000 events.

    .venv/bin/python bench/capsule_bench.py [--seconds 10] [--batch 1000,5000] [--concurrency 2] [--no-stats]

Ingest is measured for each --batch size in turn (1,000 and 5,000 events per
AppendEvents by default; the service accepts up to 10,000): a batch pays one
commit and a few round trips whatever its size, so the two sizes show that
fixed cost next to the per-event one.

The 1,000,000 PatchAttempt events of the statistics go in through
AppendEvents too, so the hourly rollups they are read from are the ones built
at ingest (their rate is reported as a second ingest figure). The histogram
p50/p95 are then compared with exact percentile_cont over the same rows.

Creates and drops its own database on the PostgreSQL of SPECKIT_TEST_PG_DSN
(default postgresql://postgres@127.0.0.1:5432/postgres). The service runs as
`speckit serve capsule` in a subprocess on 127.0.0.1, so its RSS is its own.
Bounded: ingest stops after --seconds or --max-events, statistics run
--stats-runs times. Prints a table with each target and writes
bench/results/capsule.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg

from speckit_reflex.capsule import migrate
from speckit_reflex.clients.health import wait_serving
from speckit_reflex.clients.ports import pick_port
from speckit_reflex.v1 import capsule_pb2, capsule_pb2_grpc, common_pb2

ROOT = Path(__file__).resolve().parent.parent
ADMIN_DSN = os.environ.get("SPECKIT_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
TARGET_INGEST = 50_000  # events/s
TARGET_RSS_MB = 250
TARGET_STATS_MS = 200
STATS_ROWS = 1_000_000

MODELS = ("deepseek-chat", "qwen2.5-coder-7b", "gpt-oss-20b", "qwen3-coder-30b-a3b")
SEED_SPAN_US = 20 * 3_600_000_000

EXACT_P95 = """
SELECT mode, percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY latency_ms)
FROM events WHERE type = 3 AND time_us >= %(start)s AND time_us < %(end)s GROUP BY mode
"""


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _batches(n_batches: int, batch: int) -> list[capsule_pb2.AppendEventsRequest]:
    """Pre-built requests of LLMCall events, so the client spends little CPU."""
    out = []
    now_s = int(time.time())
    for b in range(n_batches):
        req = capsule_pb2.AppendEventsRequest()
        for i in range(batch):
            ev = req.events.add(
                id=f"{uuid.uuid4()}",
                type=common_pb2.EVENT_TYPE_LLM_CALL,
                role=common_pb2.ROLE_IMPLEMENTER,
                mode=common_pb2.ROUTING_MODE_REFLEX,
                model="qwen2.5-coder-7b",
                backend="sglang-primary",
                session_id=f"s{b}",
                latency_ms=140.0 + i % 50,
                prompt_tokens=900,
                completion_tokens=80,
                tokens_per_s=41.0,
                request_sha256="ab" * 32,
            )
            ev.time.seconds = now_s
            ev.cached_tokens = 768
        out.append(req)
    return out


def _attempt_batches(
    n: int, batch: int, now_us: int, seed: int = 1
) -> Iterator[capsule_pb2.AppendEventsRequest]:
    """PatchAttempt events over the last 20 hours, in time order as PatchLoop
    appends them (a batch spans about a minute): 4 models, a quarter cloud,
    latency 50-3050 ms, TTFT 5-305 ms, cached tokens on two thirds."""
    rng = random.Random(seed)
    for b in range(0, n, batch):
        req = capsule_pb2.AppendEventsRequest()
        for g in range(b, min(b + batch, n)):
            t = now_us - SEED_SPAN_US + g * SEED_SPAN_US // n
            ev = req.events.add(
                id=f"seed-{g}",
                type=common_pb2.EVENT_TYPE_PATCH_ATTEMPT,
                role=common_pb2.ROLE_IMPLEMENTER,
                mode=common_pb2.ROUTING_MODE_CLOUD
                if g % 4 == 0
                else common_pb2.ROUTING_MODE_REFLEX,
                model=MODELS[g % 4],
                stage=common_pb2.STAGE_IMPLEMENT,
                session_id=f"s{g % 1000}",
                latency_ms=50 + rng.random() * 3000,
                ttft_ms=5 + rng.random() * 300,
                prompt_tokens=1000,
                completion_tokens=120,
                tokens_per_s=20 + rng.random() * 30,
                success=rng.random() < 0.9,
                json_valid=rng.random() < 0.99,
                attempt=1 + g % 3,
            )
            ev.time.seconds, ev.time.nanos = divmod(t, 1_000_000)
            ev.time.nanos *= 1000
            if g % 3:
                ev.cached_tokens = 800
        yield req


async def _wait_serving(addr: str) -> None:
    try:
        await wait_serving(addr, timeout_s=60)
    except TimeoutError:
        raise SystemExit(f"capsule at {addr} did not start") from None


async def bench_ingest(addr: str, pid: int, args: argparse.Namespace, batch: int) -> dict:
    n_batches = args.max_events // batch
    print(f"building {n_batches} batches of {batch} events ...", file=sys.stderr)
    batches = _batches(n_batches, batch)
    rss_samples: list[float] = []
    inserted = 0
    async with grpc.aio.insecure_channel(
        addr, options=[("grpc.max_send_message_length", 64 << 20)]
    ) as ch:
        stub = capsule_pb2_grpc.CapsuleStub(ch)
        await stub.AppendEvents(batches[0], timeout=30)  # warm-up (pool, staging table)
        inserted += batch
        queue = iter(batches[1:])
        deadline = time.perf_counter() + args.seconds
        sent = 0

        async def worker() -> None:
            nonlocal sent, inserted
            for req in queue:
                if time.perf_counter() > deadline:
                    return
                reply = await stub.AppendEvents(req, timeout=60)
                inserted += reply.inserted
                sent += len(req.events)

        async def sampler() -> None:
            while True:
                rss_samples.append(_rss_mb(pid))
                await asyncio.sleep(0.2)

        sampling = asyncio.create_task(sampler())
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - t0
        sampling.cancel()
    return {
        "events": sent,
        "seconds": round(elapsed, 3),
        "events_per_s": round(sent / elapsed),
        "inserted_total": inserted,
        "batch": batch,
        "concurrency": args.concurrency,
        "rss_max_mb": round(max(rss_samples), 1),
        "rss_median_mb": round(statistics.median(rss_samples), 1),
    }


async def bench_stats(addr: str, db_dsn: str, args: argparse.Namespace) -> dict:
    print(f"ingesting {STATS_ROWS:,} PatchAttempt events through AppendEvents ...", file=sys.stderr)
    now_us = time.time_ns() // 1000
    async with grpc.aio.insecure_channel(
        addr, options=[("grpc.max_send_message_length", 64 << 20)]
    ) as ch:
        stub = capsule_pb2_grpc.CapsuleStub(ch)
        batches = _attempt_batches(STATS_ROWS, args.batch[0], now_us)
        inserted = 0
        t0 = time.perf_counter()

        async def worker() -> None:
            nonlocal inserted
            for req in batches:
                inserted += (await stub.AppendEvents(req, timeout=60)).inserted

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        seed_s = time.perf_counter() - t0
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
        times_ms = []
        req = capsule_pb2.GetBakeoffStatsRequest(window=capsule_pb2.Window(since="24h"))
        for _ in range(args.stats_runs):
            t0 = time.perf_counter()
            reply = await stub.GetBakeoffStats(req, timeout=120)
            times_ms.append((time.perf_counter() - t0) * 1000)
        # The bakeoff report over the same window: statistics, verdicts and
        # the latency chart, written as JSON and Markdown.
        report_ms = []
        with tempfile.TemporaryDirectory() as out_dir:
            for _ in range(args.stats_runs):
                t0 = time.perf_counter()
                await stub.WriteReport(
                    capsule_pb2.WriteReportRequest(window=req.window, out_dir=out_dir), timeout=120
                )
                report_ms.append((time.perf_counter() - t0) * 1000)
    total = reply.reflex.total_attempts + reply.cloud.total_attempts
    with psycopg.connect(db_dsn) as conn:
        exact = dict(
            conn.execute(
                EXACT_P95,
                {"start": reply.start.ToMicroseconds(), "end": reply.end.ToMicroseconds()},
            ).fetchall()
        )
    rel_err = max(
        abs(got - want) / want
        for mode, s in (
            (common_pb2.ROUTING_MODE_REFLEX, reply.reflex),
            (common_pb2.ROUTING_MODE_CLOUD, reply.cloud),
        )
        for got, want in zip((s.p50_latency_ms, s.p95_latency_ms), exact[mode], strict=True)
    )
    return {
        "events_in_window": total,
        "inserted": inserted,
        "runs": args.stats_runs,
        "median_ms": round(statistics.median(times_ms), 1),
        "min_ms": round(min(times_ms), 1),
        "max_ms": round(max(times_ms), 1),
        "all_ms": [round(t, 1) for t in times_ms],
        "write_report_median_ms": round(statistics.median(report_ms), 1),
        "percentile_method": reply.reflex.percentile_method,
        "reflex_p95_latency_ms": round(reply.reflex.p95_latency_ms, 1),
        "max_rel_error_vs_exact": round(rel_err, 5),
        "attempt_ingest_events_per_s": round(inserted / seed_s),
    }


async def main_async(args: argparse.Namespace) -> dict:
    db = f"speckit_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{db}"')
    db_dsn = f"{ADMIN_DSN.rsplit('/', 1)[0]}/{db}"
    url = db_dsn.replace("postgresql://", "postgresql+psycopg://", 1)
    addr = f"127.0.0.1:{pick_port()}"
    proc = None
    try:
        migrate.upgrade_url(url)
        env = {
            **os.environ,
            "SPECKIT_CAPSULE_ADDR": addr,
            "SPECKIT_DATABASE_URL": url,
            "SPECKIT_LOG_LEVEL": "WARNING",
            "SPECKIT_MAX_MESSAGE_BYTES": str(64 << 20),
        }
        speckit = Path(sys.executable).with_name("speckit")
        proc = await asyncio.to_thread(
            subprocess.Popen, [str(speckit), "serve", "capsule"], env=env, cwd=ROOT
        )
        await _wait_serving(addr)
        idle_rss = _rss_mb(proc.pid)
        ingest = [await bench_ingest(addr, proc.pid, args, batch) for batch in args.batch]
        stats = await bench_stats(addr, db_dsn, args) if args.stats else None
        return {"idle_rss_mb": round(idle_rss, 1), "ingest": ingest, "stats": stats}
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seconds", type=float, default=10.0, help="ingest duration bound")
    p.add_argument("--max-events", type=int, default=400_000, help="ingest count bound")
    p.add_argument(
        "--batch",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[1000, 5000],
        help="events per AppendEvents; a comma-separated list measures each size (default 1000,5000)",
    )
    p.add_argument("--concurrency", type=int, default=2, help="AppendEvents in flight")
    p.add_argument("--stats-runs", type=int, default=5)
    p.add_argument(
        "--no-stats",
        dest="stats",
        action="store_false",
        help="measure ingest only (skips the 1,000,000-attempt statistics part)",
    )
    args = p.parse_args()
    res = asyncio.run(main_async(args))
    st = res["stats"]
    rss_max = max(ing["rss_max_mb"] for ing in res["ingest"])
    rows = [
        (
            f"ingest into Postgres, AppendEvents of {ing['batch']:,}",
            f"{ing['events_per_s']:,} events/s",
            f">= {TARGET_INGEST:,} events/s",
            ing["events_per_s"] >= TARGET_INGEST,
        )
        for ing in res["ingest"]
    ] + [
        (
            "service RSS while ingesting (max)",
            f"{rss_max} MB",
            f"<= {TARGET_RSS_MB} MB",
            rss_max <= TARGET_RSS_MB,
        ),
        ("service idle RSS", f"{res['idle_rss_mb']} MB", "<= 150 MB", res["idle_rss_mb"] <= 150),
    ]
    if st is not None:
        rows[-1:-1] = [
            (
                "ingest of PatchAttempt events (rollups updated)",
                f"{st['attempt_ingest_events_per_s']:,} events/s",
                "(not a target)",
                True,
            ),
            (
                f"GetBakeoffStats over {st['events_in_window']:,} events (median of {st['runs']})",
                f"{st['median_ms']} ms",
                f"<= {TARGET_STATS_MS} ms",
                st["median_ms"] <= TARGET_STATS_MS,
            ),
            (
                f"  p50/p95 ({st['percentile_method']}) vs exact, max relative error",
                f"{100 * st['max_rel_error_vs_exact']:.3f} %",
                "<= 1 %",
                st["max_rel_error_vs_exact"] <= 0.01,
            ),
            (
                "WriteReport over the same window (median)",
                f"{st['write_report_median_ms']} ms",
                "(not a target)",
                True,
            ),
        ]
    width = max(len(r[0]) for r in rows)
    print(f"{'figure':<{width}}  {'measured':>18}  {'target':>20}  ok")
    for name, got, target, ok in rows:
        print(f"{name:<{width}}  {got:>18}  {target:>20}  {'yes' if ok else 'NO'}")
    out = ROOT / "bench" / "results" / ("capsule.json" if st is not None else "capsule_ingest.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    res["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    res["args"] = vars(args)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
