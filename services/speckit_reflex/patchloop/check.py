"""CheckPatch: build a captured run's workspace with a patch laid over it.

The workspace comes from Capsule (captured under capture.mode = full_io),
never from the caller; the patch is the run's recorded fix, a candidate
model's JSON patch (planned exactly as the loop plans a reply), or nothing.
The build runs the policy's profiles by name in the sandbox, in a temporary
scratch copy that is removed afterwards. Harvest uses it to check that a
captured task is broken as captured and fixed by its fix; replay uses it to
judge a candidate model's patch.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path

from speckit_reflex.errors import FailedPrecondition, NotFound, Unavailable
from speckit_reflex.patchloop.capture import CaptureStore, CaptureUnavailable
from speckit_reflex.patchloop.compiler import CompileOutcome, Compiler
from speckit_reflex.patchloop.patch import (
    PatchBounds,
    PatchRejected,
    parse_patch,
    patch_schema,
    plan_patch,
)
from speckit_reflex.patchloop.spec import BuildStep, build_timeout_s, policy_profile
from speckit_reflex.patchloop.workspace import Scratch, _replace, checked_relative
from speckit_reflex.policy import LoadedPolicy
from speckit_reflex.runtime import validate
from speckit_reflex.v1 import capsule_pb2, patchloop_pb2

RULES: dict[str, validate.Rule] = {
    "run_id": validate.Text(128, required=True),
    "patch_json": validate.Text(1_000_000),
    "build_profile": validate.Text(32),
    "verify_profile": validate.Text(32),
}


def materialize(capture: capsule_pb2.RunCapture, base_dir: Path | None) -> Scratch:
    """A temporary scratch copy holding the captured files (blocking I/O)."""
    temp = Path(tempfile.mkdtemp(prefix="speckit-check-", dir=base_dir))
    try:
        ws = temp / "ws"
        ws.mkdir()
        (temp / "target").mkdir()
        for f in capture.files:
            # Stored data is hostile too: every path is checked against the copy.
            rel, _ = checked_relative(ws, f.path)
            _replace(ws, rel, f.content.encode("utf-8"))
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return Scratch(
        ws, ws, temp / "target", cache_state=patchloop_pb2.CACHE_STATE_OFF, temp_dir=temp
    )


class PatchChecker:
    """Builds captured workspaces with a patch; dependencies through the constructor."""

    def __init__(
        self,
        compiler: Compiler,
        policy: LoadedPolicy,
        captures: CaptureStore,
        scratch_dir: Path | None = None,
    ):
        self._compiler = compiler
        self._policy = policy
        self._captures = captures
        self._scratch_dir = scratch_dir

    def _steps(
        self, req: patchloop_pb2.CheckPatchRequest, capture: capsule_pb2.RunCapture
    ) -> tuple[BuildStep, BuildStep | None]:
        pl = self._policy.policy.patchloop
        build = policy_profile(
            "build_profile",
            req.build_profile or capture.build_profile or pl.build_profile,
            pl.profiles,
        )
        name = req.verify_profile if req.HasField("verify_profile") else capture.verify_profile
        return build, (policy_profile("verify_profile", name, pl.profiles) if name else None)

    async def check(self, req: patchloop_pb2.CheckPatchRequest) -> patchloop_pb2.CheckPatchReply:
        validate.check_message(req, RULES)
        timeout_s = build_timeout_s(req.build_timeout_s, self._policy.policy.patchloop)
        try:
            capture = await self._captures.get(req.run_id)
        except KeyError:
            raise NotFound(f"no captured workspace for run {req.run_id!r}") from None
        except CaptureUnavailable as exc:
            raise Unavailable(str(exc)) from None
        if not capture.files:
            raise FailedPrecondition(
                f"run {req.run_id!r} has no captured workspace"
                + (f": {capture.skipped}" if capture.skipped else "")
            )
        build, verify = self._steps(req, capture)
        if req.HasField("recorded_fix") and req.recorded_fix and not capture.fixed:
            raise FailedPrecondition(f"run {req.run_id!r} recorded no verified fix")
        started = time.perf_counter()
        scratch = await asyncio.to_thread(materialize, capture, self._scratch_dir)
        try:
            reply = patchloop_pb2.CheckPatchReply(
                build_profile=build.profile, verify_profile=verify.profile if verify else ""
            )
            try:
                # Reads and writes of the copy: off the event loop.
                await asyncio.to_thread(self._apply, req, capture, scratch)
                reply.patch_applied = True
            except PatchRejected as rej:
                reply.patch_rejected = f"{rej.reason}: {rej.detail}"[:4096]
                reply.duration_ms = (time.perf_counter() - started) * 1000
                return reply
            outcome = await self._compiler.compile(build.command, scratch, timeout_s)
            reply.compiles = outcome.clean
            if outcome.clean and verify is not None:
                outcome = await self._compiler.compile(verify.command, scratch, timeout_s)
            reply.verified = reply.compiles and outcome.clean
            self._fill(reply, outcome)
            reply.duration_ms = (time.perf_counter() - started) * 1000
            return reply
        finally:
            await asyncio.to_thread(scratch.close)

    def _apply(
        self,
        req: patchloop_pb2.CheckPatchRequest,
        capture: capsule_pb2.RunCapture,
        scratch: Scratch,
    ) -> None:
        kind = req.WhichOneof("patch")
        if kind == "recorded_fix" and req.recorded_fix:
            for f in capture.fix_files:
                rel, _ = checked_relative(scratch.root, f.path)
                _replace(scratch.root, rel, None if f.deleted else f.content.encode("utf-8"))
        elif kind == "patch_json":
            pl = self._policy.policy.patchloop
            schema = patch_schema(PatchBounds.for_max_tokens(pl.max_tokens))
            edits = parse_patch(req.patch_json, schema)
            planned = plan_patch(edits, scratch.resolve, scratch.read_text, pl.allow_create_files)
            scratch.write(planned)

    @staticmethod
    def _fill(reply: patchloop_pb2.CheckPatchReply, outcome: CompileOutcome) -> None:
        proto = outcome.to_proto(verify=False)
        reply.error_count = proto.error_count
        reply.timed_out = proto.timed_out
        reply.diagnostics.extend(proto.diagnostics[:200])
