"""`speckit reflex run PATH`: fix one crate with the PatchLoop service, with
live progress lines on stderr and the outcome (and its diff) at the end."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from speckit_reflex.bakeoff.trial import MODE_VALUES
from speckit_reflex.cli.output import CliError, console, print_diff, print_json, stdout
from speckit_reflex.cli.reflex_links import ServiceLinks, reporting, run_with_links
from speckit_reflex.contract import enum_name
from speckit_reflex.v1 import common_pb2, patchloop_pb2

# Outcomes after which the crate builds: exit 0.
GOOD_OUTCOMES = frozenset({"fixed", "already_clean"})


def register(rsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    q = rsub.add_parser("run", help="fix one crate with the reflex loop (escalating per policy)")
    q.add_argument("path", help="crate or workspace folder")
    q.add_argument(
        "--apply", action="store_true", help="write the fix back to PATH when it succeeds"
    )
    q.add_argument(
        "--test",
        action="store_true",
        help="confirm the fix with the policy's `test` profile (cargo test --offline -q by default)",
    )
    q.add_argument(
        "--profile",
        default="",
        metavar="NAME",
        help="build profile of the PatchLoop policy (check, clippy, ...; default: the policy's)",
    )
    q.add_argument("--max-attempts", type=int, default=0, help="patch attempts (0 = policy)")
    fast = q.add_mutually_exclusive_group()
    fast.add_argument(
        "--no-compiler-fast-path",
        dest="fast_path",
        action="store_false",
        default=None,
        help="skip rustc's MachineApplicable suggestions; ask the model directly",
    )
    fast.add_argument(
        "--compiler-fast-path",
        dest="fast_path",
        action="store_true",
        help="apply rustc's MachineApplicable suggestions first (policy default)",
    )
    q.add_argument(
        "--mode",
        choices=["reflex", "cloud"],
        default="",
        help="force one route (default: the Router's)",
    )
    q.add_argument("--session-id", default="", help="session id for audit (default: one per run)")
    q.add_argument("--json", action="store_true", help="outcome as JSON on stdout")
    q.set_defaults(func=run_fix)


@dataclass(frozen=True)
class FixRequest:
    """What to ask PatchLoop: an absolute workspace (the server resolves
    relative paths against its own working directory) and the run's options."""

    workspace: str
    options: dict[str, Any]


def build_request(args: argparse.Namespace) -> FixRequest:
    """The PatchLoop run of the command's arguments."""
    path = Path(args.path).resolve()
    if not path.is_dir():
        raise CliError(f"{args.path}: not a folder")
    options: dict[str, Any] = {
        "apply": args.apply,
        "max_attempts": max(0, args.max_attempts),
        "session_id": args.session_id,
        "compiler_fast_path": args.fast_path,
        "build_profile": args.profile,
    }
    if args.test:
        options["verify_profile"] = "test"
    if args.mode:
        options["force_mode"] = MODE_VALUES[args.mode]
    return FixRequest(str(path), options)


def describe(ev: patchloop_pb2.RunEvent) -> str:
    """One progress line for a PatchLoop event ("" for the final result)."""
    kind = ev.WhichOneof("kind")
    a = f"[{ev.attempt}] " if ev.attempt else ""
    if kind == "compile_started":
        return f"{a}{'test' if ev.compile_started.verify else 'build'}: {' '.join(ev.compile_started.command)}"
    if kind == "compile_finished":
        c = ev.compile_finished
        step = "tests" if c.verify else "build"
        state = "ok" if c.success else ("timed out" if c.timed_out else f"{c.error_count} error(s)")
        first = next((d for d in c.diagnostics if d.level == "error"), None)
        where = (
            f" — {first.code or 'error'} {first.file}:{first.line}: {first.message}"
            if first and not c.success
            else ""
        )
        return f"{a}{step} {state} in {c.duration_ms / 1000:.1f} s{where}"
    if kind == "routing":
        r = ev.routing
        reason = enum_name(common_pb2.RoutingReason, r.reason)
        forced = (
            ", forced"
            if r.forced
            else ", bakeoff verdict WAIVED (--mode reflex)"
            if r.verdict_waived
            else ""
        )
        return f"{a}route: {enum_name(common_pb2.RoutingMode, r.mode)} → {r.model or '-'} on {r.backend or '-'} ({reason}{forced})"
    if kind == "model_call":
        m = ev.model_call
        ttft = f", TTFT {m.timing.ttft_ms:.0f} ms" if m.timing.HasField("ttft_ms") else ""
        cached = f", {m.usage.cached_tokens} cached" if m.usage.HasField("cached_tokens") else ""
        verdict = "valid JSON" if m.schema_valid else f"INVALID ({m.error or 'schema'})"
        return (
            f"{a}model {m.model} on {m.backend}: {verdict}, {m.timing.latency_ms:.0f} ms{ttft}, "
            f"{m.usage.completion_tokens} tokens{cached}"
        )
    if kind == "patch_applied":
        p = ev.patch_applied
        return f"{a}patch from {enum_name(patchloop_pb2.FixSource, p.source)}: {p.edits} edit(s) in {', '.join(p.files) or '-'}"
    if kind == "patch_rejected":
        return f"{a}patch rejected: {ev.patch_rejected.reason} {ev.patch_rejected.detail}".rstrip()
    if kind == "note":
        return f"{a}{ev.note}"
    return ""


def result_json(run_id: str, r: patchloop_pb2.RunResult) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "outcome": enum_name(patchloop_pb2.Outcome, r.outcome),
        "fixed_by": enum_name(patchloop_pb2.FixSource, r.fixed_by),
        "reason": r.reason,
        "attempts": r.attempts,
        "escalated": r.escalated,
        "applied": r.applied,
        "duration_ms": round(r.duration_ms, 1),
        "diff": r.diff,
    }


def show_outcome(doc: dict[str, Any]) -> None:
    outcome = doc["outcome"]
    color = "green" if outcome in GOOD_OUTCOMES else "red"
    by = f" by {doc['fixed_by']}" if outcome == "fixed" else ""
    stdout.print(
        f"outcome: [bold {color}]{outcome}[/]{by} after {doc['attempts']} attempt(s) "
        f"in {doc['duration_ms'] / 1000:.1f} s",
        highlight=False,
    )
    if doc["reason"]:
        stdout.print(f"reason: {doc['reason']}", highlight=False)
    if doc["escalated"]:
        stdout.print("escalated to cloud", highlight=False)
    if doc["diff"]:
        print_diff(doc["diff"])
        stdout.print(
            "applied to the workspace" if doc["applied"] else "not applied (use --apply)",
            highlight=False,
        )


async def stream_fix(links: ServiceLinks, req: FixRequest, err: Console) -> dict[str, Any]:
    """Run PatchLoop, printing progress on `err`; returns the outcome document."""
    result: patchloop_pb2.RunResult | None = None
    run_id = ""
    with reporting("patchloop", links):
        async for ev in links.patchloop.run(req.workspace, **req.options):
            run_id = run_id or ev.run_id
            if ev.WhichOneof("kind") == "result":
                result = ev.result
            elif line := describe(ev):
                err.print(f"  {line}", highlight=False, markup=False)
    if result is None:
        raise CliError("patchloop: the run ended without a result")
    return result_json(run_id, result)


def run_fix(args: argparse.Namespace) -> int:
    req = build_request(args)
    err = console(stderr=True)

    async def body(links: ServiceLinks) -> int:
        err.print(f"fixing {req.workspace}", highlight=False)
        doc = await stream_fix(links, req, err)
        if args.json:
            print_json(doc)
        else:
            show_outcome(doc)
        return 0 if doc["outcome"] in GOOD_OUTCOMES else 1

    return run_with_links(body)
