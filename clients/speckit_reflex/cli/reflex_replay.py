"""`speckit reflex replay`: resend captured LLMCall requests to a candidate
model and compare it with what was recorded (capture.mode = full_io only).

Through the services' contracts only: Capsule's QueryEvents gives the calls
(prompts and schemas as stored), the Inference service sends them to the
candidate, PatchLoop's CheckPatch judges patch replies against the captured
workspace in its sandbox. The report goes beside the bakeoff reports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.timestamp_pb2 import Timestamp

from speckit_reflex.bakeoff.replay import (
    CapturedCall,
    ReplayedCall,
    ReplayReport,
    Side,
    Thresholds,
    candidate_side,
    captured_calls,
    recorded_side,
    write_report,
)
from speckit_reflex.capsule.windows import parse_duration_us
from speckit_reflex.cli.output import CliError, console, print_json, rpc_error, table
from speckit_reflex.cli.reflex_links import ServiceLinks, reporting, run_with_links
from speckit_reflex.clients.errors import about_the_request, error_of
from speckit_reflex.v1 import common_pb2, inference_pb2

CALL_TIMEOUT_S = 300.0


def register(rsub: argparse._SubParsersAction[argparse.ArgumentParser], window_arg: Any) -> None:
    q = rsub.add_parser(
        "replay",
        help="resend captured model calls to a candidate model and judge it (capture.mode = full_io)",
    )
    q.add_argument("--model", required=True, help="the candidate model (as its backend names it)")
    q.add_argument("--backend", default="", help="policy backend serving it (default: local ones)")
    q.add_argument(
        "--since", default="7d", type=window_arg, help="calls recorded in this window (default 7d)"
    )
    q.add_argument("--limit", type=int, default=50, help="newest N calls (default 50, 0 = all)")
    q.add_argument(
        "--report-dir", default=".speckit/eval", help="report folder (default .speckit/eval)"
    )
    q.add_argument("--exit-code", action="store_true", help="exit 1 unless every threshold passes")
    q.add_argument("--json", action="store_true", help="the report as JSON on stdout")
    q.set_defaults(func=run_replay)


def _since_us(since: str) -> int:
    """The start of the window `since` (checked by the argument parser) back from now."""
    return time.time_ns() // 1000 - parse_duration_us(since)


class PatchJudge:
    """Whether a patch reply, laid over its run's captured workspace, builds and
    passes the verify step; which patch requests can be judged at all."""

    def __init__(self, links: ServiceLinks):
        self._links = links
        self._why_not: dict[str, str] = {}

    async def _run_not_judgeable(self, run_id: str) -> str:
        if run_id in self._why_not:
            return self._why_not[run_id]
        why = ""
        try:
            capture = await self._links.capsule.get_run_capture(run_id)
            if not capture.files:
                why = f"the run's workspace was not captured ({capture.skipped or 'no files'})"
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND and (
                error_of(exc).reason != common_pb2.ERROR_REASON_CAPTURE_OFF
            ):
                raise
            why = "the run's workspace was not captured"
        if not why:
            attempts = await self._links.capsule.all_events(
                type=common_pb2.EVENT_TYPE_PATCH_ATTEMPT, run_id=run_id
            )
            for ev in attempts:
                payload = MessageToDict(ev.payload)
                if ev.attempt == 0 and payload.get("kept") and not ev.success:
                    why = "rustc's suggestions changed the workspace before the model was asked"
        self._why_not[run_id] = why
        return why

    async def why_not(self, call: CapturedCall) -> str:
        """ "" when the call's patch replies can be judged, else why not."""
        if not call.is_patch:
            return "not a patch request"
        ev = call.event
        if not ev.run_id:
            return "no run recorded with the call"
        if ev.attempt != 1:
            return f"attempt {ev.attempt}: its prompt saw a workspace changed by earlier attempts"
        return await self._run_not_judgeable(ev.run_id)

    async def judge(self, run_id: str, side: Side) -> str:
        if not side.replied:
            return "not_judged: no reply"
        try:
            reply = await self._links.patchloop.check_patch(run_id, patch_json=side.content)
        except grpc.aio.AioRpcError as exc:
            failed = rpc_error("patchloop", exc, self._links.config("patchloop").address)
            if not about_the_request(error_of(exc)):
                raise failed from None
            # Captures and events are stored by any token holder: one call, not the replay.
            return f"not_judged: CheckPatch refused it ({failed})"[:400]
        if not reply.patch_applied:
            return f"rejected: {reply.patch_rejected[:200]}"
        if reply.verified:
            return "verified"
        return "builds" if reply.compiles else "fails"


async def candidate_reply(
    links: ServiceLinks, request: inference_pb2.CompleteRequest
) -> tuple[inference_pb2.CompleteReply | None, str]:
    final: inference_pb2.CompleteReply | None = None
    try:
        async for chunk in links.inference.send_stream(request, timeout=CALL_TIMEOUT_S):
            if chunk.WhichOneof("kind") == "final":
                final = chunk.final
    except grpc.aio.AioRpcError as exc:
        if error_of(exc).reason == common_pb2.ERROR_REASON_NO_BACKEND_FOR_MODEL:
            # Every call would fail the same way: a typo in --model or --backend,
            # not a candidate that failed its replay.
            raise CliError(
                f"replay refused: {exc.details()}; `speckit reflex models` lists what the "
                "backends serve, and --backend names one of the policy's backends"
            ) from None
        return None, f"{exc.code().name}: {exc.details()}"
    return final, "" if final is not None else "the stream ended without a reply"


async def replay(
    links: ServiceLinks, model: str, backend: str, since: str, limit: int
) -> dict[str, Any]:
    with reporting("router", links):
        snap = await links.router.get_policy(timeout=10)
    try:
        thresholds = Thresholds.from_policy(json.loads(snap.json or "{}"))
    except ValueError as exc:
        raise CliError(f"the Router's policy cannot judge a replay: {exc}") from None
    with reporting("capsule", links):
        events = await links.capsule.all_events(
            type=common_pb2.EVENT_TYPE_LLM_CALL, since=_ts(_since_us(since)), page_size=200
        )
    calls, not_captured = captured_calls(events)
    if not calls:
        if not_captured:
            raise CliError(
                f"replay refused: the {not_captured} model call(s) of the last {since} were "
                "recorded while capture.mode was not full_io, so their prompts were not stored; "
                'set capture.mode = "full_io", let the agent run, then replay'
            )
        raise CliError(f"nothing to replay: no model call was recorded in the last {since}")
    if limit > 0:
        calls = calls[:limit]
    report = ReplayReport(model, backend, since, not_captured=not_captured, thresholds=thresholds)
    judge = PatchJudge(links)
    err = console(stderr=True)
    for i, call in enumerate(calls, 1):
        with reporting("inference", links):
            reply, error = await candidate_reply(links, call.to_request(model, backend))
        recorded = recorded_side(call)
        candidate = candidate_side(reply, error, bool(call.params.get("json_schema")))
        if call.is_patch:
            with reporting("capsule", links):
                why = await judge.why_not(call)
            if why:
                recorded.patch = candidate.patch = f"not_judged: {why}"
            else:
                with reporting("patchloop", links):
                    recorded.patch = await judge.judge(call.event.run_id, recorded)
                    candidate.patch = await judge.judge(call.event.run_id, candidate)
        report.calls.append(ReplayedCall(call, recorded, candidate))
        err.print(
            f"[{i}/{len(calls)}] {call.event.id}: candidate "
            + (f"replied in {candidate.latency_ms:.0f} ms" if candidate.replied else error)
            + (f", patch {candidate.patch}" if candidate.patch else ""),
            highlight=False,
            markup=False,
        )
    return report.to_json()


def _ts(us: int) -> Timestamp:
    ts = Timestamp()
    ts.FromMicroseconds(us)
    return ts


def show(doc: dict[str, Any]) -> None:
    rec, cand = doc["figures"]["recorded"], doc["figures"]["candidate"]
    table(
        f"Replay of {rec['calls']} call(s) against {doc['candidate']['model']}",
        ["figure", "recorded", "candidate"],
        [[k, rec[k], cand[k]] for k in rec],
    )
    verdict = doc["verdict"]
    table(
        f"Verdict: {verdict['status']}",
        ["threshold", "status", "observed", "required", "why"],
        [
            [
                r["name"],
                r["status"],
                r["observed"],
                f"{r['comparison']} {r['required']:g}",
                r["message"],
            ]
            for r in verdict["results"]
        ],
    )
    console().print(
        f"report: {doc['report']['json']}\n        {doc['report']['markdown']}",
        highlight=False,
        markup=False,
    )


def run_replay(args: argparse.Namespace) -> int:
    out_dir = Path(args.report_dir).resolve()

    async def body(links: ServiceLinks) -> int:
        doc = await replay(links, args.model, args.backend, args.since, max(0, args.limit))
        json_path, md_path = await asyncio.to_thread(write_report, out_dir, doc)
        doc["report"] = {"json": str(json_path), "markdown": str(md_path)}
        if args.json:
            print_json(doc)
        else:
            show(doc)
        return 1 if args.exit_code and not doc["verdict"]["passed"] else 0

    return run_with_links(body)
