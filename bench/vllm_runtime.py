"""The real vLLM CPU runtime through the adapter's `vllm` dialect: TTFT,
decode speed, prefix-cache hits, resident memory.

    bash scripts/vllm_env.sh serve 8000 &     # wait for /health
    .venv/bin/python bench/vllm_runtime.py --port 8000 [--runs 5]

Each run streams one chat completion of up to 64 tokens at temperature 0
through `ModelServer.stream_chat` (what the adapter does per call); then a
~1,000-token prompt is sent twice and the second reply's cached tokens and the
/metrics prefix-cache counters are read. Resident memory is the sum of VmRSS
of the server's process tree. Writes bench/results/vllm_runtime.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

from speckit_reflex.inference.backends import BackendSpec, Generation, ModelServer

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"
LONG = "\n".join(
    f"fn helper_{i}(w: u32, h: u32) -> u32 {{ w * {i} + h + {i * 7} }}" for i in range(48)
)


def tree_rss_mb(port: int) -> float:
    """VmRSS of the process listening on `port` and all its descendants."""
    inode_owner: dict[str, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                link = fd.readlink().as_posix()
                if link.startswith("socket:["):
                    inode_owner[link[8:-1]] = int(proc.name)
        except OSError:
            continue
    owner = next(
        (
            inode_owner.get(r.split()[9])
            for r in Path("/proc/net/tcp").read_text().splitlines()[1:]
            if r.split()[3] == "0A" and int(r.split()[1].split(":")[1], 16) == port
        ),
        None,
    )
    if owner is None:
        return 0.0
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(proc.name))
    total_kb, todo = 0, [owner]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            total_kb += next(
                int(line.split()[1])
                for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith("VmRSS:")
            )
        except (OSError, StopIteration):
            continue
    return total_kb / 1024


async def one(
    server: ModelServer, messages: list[dict[str, str]], max_tokens: int
) -> tuple[float, float, Generation]:
    loop = asyncio.get_running_loop()
    gen = Generation()
    body = server.dialect.chat_body(MODEL, messages, max_tokens, 0.0, None, None, "")
    t0 = time.perf_counter()
    async for _ in server.stream_chat(body, loop.time() + 300, gen):
        pass
    end = time.perf_counter()
    completion = int((gen.usage or {}).get("completion_tokens") or 0)
    first = gen.first_token_at or end
    tps = (completion - 1) / (end - first) if completion > 1 and end > first else 0.0
    return (first - t0) * 1000, tps, gen


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    server = ModelServer(BackendSpec("vllm", "vllm", f"http://127.0.0.1:{args.port}/v1", (MODEL,)))
    try:
        ttfts, speeds = [], []
        for i in range(args.runs):
            ttft, tps, _ = await one(
                server, [{"role": "user", "content": f"Write a short poem about Rust, #{i}."}], 64
            )
            ttfts.append(ttft)
            speeds.append(tps)
        before = await server.prefix_cache(10)
        long = [
            {"role": "system", "content": LONG},
            {"role": "user", "content": "Which helper adds 21?"},
        ]
        _, _, first = await one(server, long, 4)
        _, _, second = await one(server, long, 4)
        after = await server.prefix_cache(10)
    finally:
        await server.close()
    out = {
        "runs": args.runs,
        "ttft_ms_p50": round(statistics.median(ttfts), 1),
        "ttft_ms_max": round(max(ttfts), 1),
        "decode_tokens_per_s_p50": round(statistics.median(speeds), 1),
        "long_prompt_tokens": (second.usage or {}).get("prompt_tokens"),
        "cached_tokens_first": first.cached_tokens,
        "cached_tokens_repeat": second.cached_tokens,
        "metrics_hit_tokens_delta": (after.hit_tokens - before.hit_tokens)
        if before and after
        else None,
        "metrics_queried_tokens_delta": (after.queried_tokens - before.queried_tokens)
        if before and after
        else None,
        "server_rss_mb": round(tree_rss_mb(args.port), 0),
    }
    for k, v in out.items():
        print(f"{k:32} {v}")
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "vllm_runtime.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
