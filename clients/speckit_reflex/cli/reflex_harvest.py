"""`speckit reflex harvest`: captured runs that ended fixed become a private
bakeoff suite (capture.mode = full_io only).

Through the services' contracts only: Capsule's ListRunCaptures and
GetRunCapture give the runs, PatchLoop's CheckPatch verifies each task in
its sandbox (broken as captured, fixed by its recorded fix) before it is
written.
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from speckit_reflex.bakeoff.digest import suite_digest
from speckit_reflex.bakeoff.harvest import (
    HarvestError,
    deduplicate,
    fix_problem,
    provenance_entry,
    write_suite,
)
from speckit_reflex.bakeoff.suite import load_suite
from speckit_reflex.cli.output import CliError, console, print_json, rpc_error, table
from speckit_reflex.cli.reflex_links import ServiceLinks, reporting, run_with_links
from speckit_reflex.clients.capsule import window
from speckit_reflex.clients.errors import about_the_request, error_of
from speckit_reflex.v1 import common_pb2


def register(rsub: argparse._SubParsersAction[argparse.ArgumentParser], window_arg: Any) -> None:
    q = rsub.add_parser(
        "harvest", help="turn captured fixed runs into a private suite (capture.mode = full_io)"
    )
    q.add_argument(
        "--since", default="7d", type=window_arg, help="runs started in this window (default 7d)"
    )
    q.add_argument(
        "--out",
        default="",
        help="suite folder to write (default .speckit/suites/harvest-<date>); "
        "its name is the suite's name",
    )
    q.add_argument("--json", action="store_true", help="result as JSON on stdout")
    q.set_defaults(func=run_harvest)


async def verify_task(links: ServiceLinks, run_id: str) -> str:
    """Why the run cannot be a task ("" when it can): its captured workspace
    must fail to build, and its recorded fix must build and pass its verify
    step, in PatchLoop's sandbox. A capture PatchLoop refuses (captures are
    stored by any token holder) is one skipped run, not a failed harvest."""
    try:
        broken = await links.patchloop.check_patch(run_id)
        if broken.compiles:
            return "the captured workspace builds as captured (nothing to fix)"
        fixed = await links.patchloop.check_patch(run_id, recorded_fix=True)
    except grpc.aio.AioRpcError as exc:
        failed = rpc_error("patchloop", exc, links.config("patchloop").address)
        if not about_the_request(error_of(exc)):
            raise failed from None
        return f"CheckPatch refused it ({failed})"
    if not fixed.patch_applied:
        return f"the recorded fix does not apply: {fixed.patch_rejected}"
    if not fixed.verified:
        step = "verify step" if fixed.compiles else "build"
        return f"the recorded fix fails its {step} ({fixed.error_count} error(s))"
    return ""


async def harvest(links: ServiceLinks, since: str, out: Path) -> dict[str, Any]:
    """Harvest the window into `out`; the result document."""
    try:
        records, not_captured = await links.capsule.all_run_captures(window(since), fixed_only=True)
    except grpc.aio.AioRpcError as exc:
        if error_of(exc).reason == common_pb2.ERROR_REASON_CAPTURE_OFF:
            raise CliError(f"harvest refused: {exc.details()}") from None
        with reporting("capsule", links):
            raise
    if not records:
        if not_captured:
            raise CliError(
                f"harvest refused: {not_captured} fixed run(s) in the last {since} were not "
                "captured (capture.mode was not full_io when they ran); nothing to harvest"
            )
        raise CliError(f"nothing to harvest: no captured run ended fixed in the last {since}")
    skipped: list[dict[str, str]] = []
    captures = []
    with reporting("capsule", links):
        for record in records:
            full = await links.capsule.get_run_capture(record.run_id)
            problem = fix_problem(full)
            if problem:
                skipped.append({"run_id": full.run_id, "reason": problem})
            else:
                captures.append(full)
    candidates = deduplicate(captures)
    tasks = []
    for cand in candidates:
        problem = await verify_task(links, cand.capture.run_id)
        if problem:
            skipped.append({"run_id": cand.capture.run_id, "reason": f"not verified: {problem}"})
        else:
            tasks.append(cand)
    if not tasks:
        raise CliError(
            "nothing to harvest: no captured fixed run could be verified ("
            + "; ".join(f"{s['run_id']}: {s['reason']}" for s in skipped[:5])
            + ")"
        )
    provenance: dict[str, Any] = {
        "suite": out.name,
        "harvested_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "since": since,
        "tasks": [provenance_entry(t) for t in tasks],
        "skipped": skipped,
        "fixed_runs_not_captured": not_captured,
    }

    def write() -> tuple[str, str]:
        write_suite(out, out.name, tasks, provenance)
        suite = load_suite(out)
        return suite.name, suite_digest(suite)

    try:
        name, digest = await asyncio.to_thread(write)
    except (HarvestError, OSError) as exc:
        raise CliError(f"cannot write the suite: {exc}") from None
    return {
        "suite": name,
        "dir": str(out),
        "digest": digest,
        "tasks": provenance["tasks"],
        "skipped": skipped,
        "duplicates": sum(len(t.replaces) for t in tasks),
        "fixed_runs_not_captured": not_captured,
    }


def show(doc: dict[str, Any]) -> None:
    table(
        f"Harvested {len(doc['tasks'])} task(s) into {doc['dir']} (digest {doc['digest'][:12]})",
        ["task", "run", "date", "errors", "fixed by", "replaces"],
        [
            [
                t["id"],
                t["run_id"],
                t["date"],
                " ".join(t["error_codes"]),
                t["fixed_by"],
                len(t["replaces"]),
            ]
            for t in doc["tasks"]
        ],
    )
    for s in doc["skipped"]:
        console().print(f"skipped {s['run_id']}: {s['reason']}", highlight=False, markup=False)
    if doc["fixed_runs_not_captured"]:
        console().print(
            f"{doc['fixed_runs_not_captured']} fixed run(s) ran without capture (not full_io)",
            highlight=False,
        )


def run_harvest(args: argparse.Namespace) -> int:
    out = Path(args.out or f".speckit/suites/harvest-{datetime.now(UTC):%Y%m%d}").resolve()

    async def body(links: ServiceLinks) -> int:
        doc = await harvest(links, args.since, out)
        if args.json:
            print_json(doc)
        else:
            show(doc)
        return 0

    return run_with_links(body)
