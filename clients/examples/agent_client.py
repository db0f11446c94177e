"""Calling speckit-reflex from an agent: one PatchLoop run over gRPC.

    python clients/examples/agent_client.py CRATE_DIR [--addr 127.0.0.1:50053] [--apply] [--test]
                                            [--session-id S] [--timeout 300] [--json]

This is the whole integration an agent needs. It uses only grpcio, the
generated stubs (`speckit_reflex.v1`) and their hand-written companion
(`speckit_reflex.contract`, for short enum names), the synchronous API, and the same
environment as the services (`SPECKIT_PATCHLOOP_ADDR`, `SPECKIT_AUTH_TOKEN`).
PatchLoop asks the Router for every attempt, calls the model through the
Inference Adapter and records everything in Capsule; the agent only starts
the run and reads its events. Progress goes to stderr, one line per event;
the result goes to stdout (JSON with --json).

Exit status: 0 fixed (or already clean), 1 gave up, 2 refused by policy
(e.g. local_only with no local model that qualifies), 3 the call failed or
the run ended in error (OUTCOME_ERROR: e.g. the Router unreachable).

The agent never sends a command: builds run the PatchLoop policy's named
profiles (`check` by default; --test adds the `test` profile after a clean
build), and CRATE_DIR must lie under the service's SPECKIT_WORKSPACE_ROOTS.

Pass the same --session-id for every run of one agent session: the Router
escalates to cloud after `max_failures` consecutive failed attempts in a
session, counted across its runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import grpc
from google.protobuf.json_format import MessageToDict

from speckit_reflex.contract import enum_name
from speckit_reflex.v1 import common_pb2, patchloop_pb2, patchloop_pb2_grpc

EXIT = {
    patchloop_pb2.OUTCOME_FIXED: 0,
    patchloop_pb2.OUTCOME_ALREADY_CLEAN: 0,
    patchloop_pb2.OUTCOME_GAVE_UP: 1,
    patchloop_pb2.OUTCOME_REFUSED: 2,
}


def describe(ev: patchloop_pb2.RunEvent) -> str:
    """One progress line for an event."""
    kind = ev.WhichOneof("kind")
    if kind == "compile_started":
        c = ev.compile_started
        return f"{'verify' if c.verify else 'build'} started ({c.profile}): {' '.join(c.command)}"
    if kind == "compile_finished":
        f = ev.compile_finished
        step = "verify" if f.verify else "build"
        return f"{step}: {f.error_count} error(s), {f.duration_ms:.0f} ms"
    if kind == "routing":
        r = ev.routing
        mode = enum_name(common_pb2.RoutingMode, r.mode)
        return f"route: {mode} {r.model or ''} ({common_pb2.RoutingReason.Name(r.reason)})".replace(
            "  ", " "
        )
    if kind == "model_call":
        m = ev.model_call
        return f"model: {m.backend}/{m.model} schema_valid={m.schema_valid} {m.error}".rstrip()
    if kind == "patch_applied":
        p = ev.patch_applied
        return f"patch: {p.edits} edit(s) to {', '.join(p.files)} ({patchloop_pb2.FixSource.Name(p.source)})"
    if kind == "patch_rejected":
        return f"patch rejected: {ev.patch_rejected.reason} {ev.patch_rejected.detail}"
    if kind == "note":
        return f"note: {ev.note}"
    if kind == "result":
        return f"result: {patchloop_pb2.Outcome.Name(ev.result.outcome)}"
    return kind or "?"


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("crate", type=Path, help="the crate or workspace to fix")
    ap.add_argument("--addr", default=os.environ.get("SPECKIT_PATCHLOOP_ADDR", "127.0.0.1:50053"))
    ap.add_argument("--apply", action="store_true", help="write the fix back when the run succeeds")
    ap.add_argument(
        "--test", action="store_true", help="confirm the fix with the policy's `test` profile"
    )
    ap.add_argument(
        "--session-id", default="", help="the agent's session (escalation counts across its runs)"
    )
    ap.add_argument(
        "--timeout", type=float, default=300.0, help="deadline of the whole run, in seconds"
    )
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args()

    token = os.environ.get("SPECKIT_AUTH_TOKEN")
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    request = patchloop_pb2.RunRequest(
        workspace=str(args.crate.resolve()), apply=args.apply, session_id=args.session_id
    )
    if args.test:
        request.verify_profile = "test"
    result = None
    with grpc.insecure_channel(args.addr) as channel:
        stub = patchloop_pb2_grpc.PatchLoopStub(channel)
        try:
            for ev in stub.Run(request, timeout=args.timeout, metadata=metadata):
                print(f"[{ev.run_id[:8]} #{ev.attempt}] {describe(ev)}", file=sys.stderr)
                if ev.WhichOneof("kind") == "result":
                    result = ev.result
        except grpc.RpcError as exc:
            print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 3
    if result is None:
        print("error: the run ended without a result", file=sys.stderr)
        return 3
    if args.json:
        print(json.dumps(MessageToDict(result, preserving_proto_field_name=True), indent=2))
    else:
        print(patchloop_pb2.Outcome.Name(result.outcome), result.reason)
        if result.diff:
            print(result.diff)
    return EXIT.get(result.outcome, 3)


if __name__ == "__main__":
    sys.exit(main())
