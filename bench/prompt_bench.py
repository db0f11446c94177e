"""Patch prompt benchmark: does the embedded model follow the prompt, or copy it?

    .venv/bin/python bench/prompt_bench.py [--limit 20] [--suite reflex_patchloop_v1] [--label NAME]

Starts the embedded stack as `speckit demo` does (llama.cpp from the xllamacpp
wheel serving SmolLM2-135M-Instruct, the four services on SQLite, capture mode
full_io), runs the first --limit tasks of the suite in reflex mode with ONE
patch attempt each (so "fixed" is pass@1, rustc's own suggestions off), then
reads every model reply back from Capsule's LLMCall events and counts:

* pass@1: tasks fixed by the first patch (compiles and its tests pass);
* replies received (a call that timed out got none: an error) and the
  schema-valid ones;
* replies identical to an example in the prompt: a reply whose JSON object,
  or any of whose edits, equals a JSON object (or one of its edits) written
  in the system or user message the model was sent;
* replies naming a file that is not the one the errors point at.

Whatever prompt services/speckit_reflex/patchloop/prompt.py builds is what is
measured: run it before and after a prompt change. Prints a table and writes
bench/results/prompt_bench[-LABEL].json. Speed is not judged here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

from grpc import aio

from speckit_reflex.bakeoff import BakeoffRunner, RunOptions, find_suite, load_suite
from speckit_reflex.bakeoff.readiness import wait_for_reflex_route
from speckit_reflex.cli.demo_stack import DemoStack
from speckit_reflex.clients.capsule import CapsuleClient
from speckit_reflex.clients.patchloop import PatchLoopClient
from speckit_reflex.clients.router import RouterClient
from speckit_reflex.v1 import common_pb2

ROOT = Path(__file__).resolve().parent.parent


def json_objects(text: str) -> list[Any]:
    """Every JSON object that can be decoded starting at some '{' of `text`."""
    decoder = json.JSONDecoder()
    found = []
    for i, ch in enumerate(text):
        if ch != "{":
            continue
        try:
            obj, _ = decoder.raw_decode(text[i:])
        except ValueError:
            continue
        if isinstance(obj, dict):
            found.append(obj)
    return found


def example_parts(messages: list[dict[str, Any]]) -> list[Any]:
    """Objects written in the prompt, and their edits, as candidates to copy."""
    parts: list[Any] = []
    for m in messages:
        for obj in json_objects(str(m.get("content", ""))):
            parts.append(obj)
            edits = obj.get("edits")
            if isinstance(edits, list):
                parts.extend(e for e in edits if isinstance(e, dict))
    return parts


def copied(reply: str, examples: list[Any]) -> bool:
    """Is the reply, or one of its edits, one of the prompt's examples?"""
    try:
        obj = json.loads(reply)
    except ValueError:
        return False
    if not isinstance(obj, dict) or not examples:
        return False
    if obj in examples:
        return True
    edits = obj.get("edits")
    return isinstance(edits, list) and any(e in examples for e in edits)


def error_files(messages: list[dict[str, Any]]) -> set[str]:
    """Files the prompt shows (lines starting with 'FILE ')."""
    user = "\n".join(str(m.get("content", "")) for m in messages if m.get("role") == "user")
    return {line[5:].strip() for line in user.splitlines() if line.startswith("FILE ")}


def struct_dict(s: Any) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(s)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    suite = load_suite(find_suite(args.suite))
    tasks = suite.select(limit=args.limit)
    with tempfile.TemporaryDirectory(prefix="prompt-bench-") as tmp:
        stack = DemoStack(Path(tmp))
        try:
            await stack.start_model_server()
            stack.write_policy()
            addrs = await stack.start_services()
            channels = {name: aio.insecure_channel(addr) for name, addr in addrs.items()}
            try:
                await wait_for_reflex_route(RouterClient(channels["router"]), 180)
                capsule = CapsuleClient(channels["capsule"], timeout_s=60)
                runner = BakeoffRunner(
                    PatchLoopClient(channels["patchloop"]),
                    capsule,
                    RunOptions(modes=("reflex",), max_attempts=1, scratch_root=Path(tmp)),
                )

                def progress(trial: Any, done: int, planned: int, _: Any) -> None:
                    print(
                        f"[{done}/{planned}] {trial.task_id}: {trial.outcome}",
                        file=sys.stderr,
                        flush=True,
                    )

                result = await runner.run(suite, tasks, on_trial=progress)
                rows = []
                for trial in result.trials:
                    events = await capsule.all_events(
                        type=common_pb2.EVENT_TYPE_LLM_CALL, run_id=trial.run_id
                    )
                    for ev in events:
                        request, response = struct_dict(ev.request), struct_dict(ev.response)
                        messages = request.get("messages", [])
                        content = response.get("content", "")
                        try:
                            files = {e.get("file") for e in json.loads(content).get("edits", [])}
                        except (ValueError, AttributeError):
                            files = set()
                        payload = struct_dict(ev.payload)
                        rows.append(
                            {
                                "task_id": trial.task_id,
                                # No finish reason: the call failed (timeout, ...), no reply to judge.
                                "replied": bool(payload.get("finish_reason")),
                                "schema_valid": bool(ev.json_valid),
                                "finish_reason": payload.get("finish_reason", ""),
                                "validation_error": payload.get("validation_error", ""),
                                "completion_tokens": ev.completion_tokens,
                                "copied_example": copied(content, example_parts(messages)),
                                "wrong_file": bool(files - error_files(messages)),
                                "reply": content[:300],
                            }
                        )
            finally:
                for ch in channels.values():
                    await ch.close()
        finally:
            await stack.stop()
    fixed = sum(t.success for t in result.trials)
    n = len(result.trials)
    return {
        "suite": suite.name,
        "suite_version": suite.version,
        "tasks": n,
        "pass_at_1": fixed,
        "pass_at_1_percent": round(100 * fixed / n, 1) if n else None,
        "model_calls": len(rows),
        "replies": sum(r["replied"] for r in rows),
        "errors_no_reply": sum(not r["replied"] for r in rows),
        "schema_valid_replies": sum(r["schema_valid"] for r in rows),
        "replies_identical_to_prompt_example": sum(r["copied_example"] for r in rows),
        "replies_naming_another_file": sum(r["wrong_file"] for r in rows),
        "replies_cut_at_max_tokens": sum(r["finish_reason"] == "length" for r in rows),
        "calls": rows,
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", default="reflex_patchloop_v1")
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--label", default="", help="suffix of the results file (e.g. before, after)")
    args = ap.parse_args()
    figures = asyncio.run(main(args))
    for key, value in figures.items():
        if key != "calls":
            print(f"{key:<40} {value}")
    out = {
        "figures": figures,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "command": "python bench/prompt_bench.py " + " ".join(sys.argv[1:]),
    }
    name = f"prompt_bench-{args.label}.json" if args.label else "prompt_bench.json"
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / name).write_text(json.dumps(out, indent=2) + "\n")
