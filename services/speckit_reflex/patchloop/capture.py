"""Workspace capture for harvest (capture.mode = full_io only).

At a run's start, after its first build found errors, the workspace is
snapshotted (text files, within the policy's capture.max_workspace_bytes,
secrets redacted, build output and VCS folders left out, symlinks never
followed) and sent to Capsule with the build's errors; when the run ends
fixed, the fix (its diff and the fixed content of the files it changed) is
sent too. `speckit reflex harvest` turns these into suite tasks.

Capture never stops a run: a Capsule that refuses or is unreachable costs a
note in the run's stream, nothing more.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import grpc
from grpc import aio

from speckit_reflex.clients.capsule import CapsuleClient
from speckit_reflex.patchloop.compiler import CompileOutcome
from speckit_reflex.patchloop.workspace import SKIP_NAMES, Scratch
from speckit_reflex.runtime.redact import redact_text
from speckit_reflex.v1 import capsule_pb2, patchloop_pb2

if TYPE_CHECKING:
    from speckit_reflex.patchloop.spec import RunSpec
    from speckit_reflex.patchloop.steps import Disk
    from speckit_reflex.policy.model import Policy

FIXED_BY: dict[int, str] = {
    patchloop_pb2.FIX_SOURCE_COMPILER: "compiler",
    patchloop_pb2.FIX_SOURCE_REFLEX: "reflex",
    patchloop_pb2.FIX_SOURCE_CLOUD: "cloud",
}


class CaptureUnavailable(Exception):
    """Capsule did not take (or give) a capture."""


class CaptureStore(Protocol):
    async def put(self, capture: capsule_pb2.RunCapture) -> None:
        """Store a part of a run's capture; raises CaptureUnavailable."""
        ...

    async def get(self, run_id: str) -> capsule_pb2.RunCapture:
        """A run's capture with its files; raises CaptureUnavailable (or KeyError when none)."""
        ...


class GrpcCaptureStore:
    """CaptureStore over Capsule's PutRunCapture and GetRunCapture (its typed client)."""

    def __init__(self, channel: aio.Channel, timeout_s: float = 30.0):
        self._capsule = CapsuleClient(channel, timeout_s)

    async def put(self, capture: capsule_pb2.RunCapture) -> None:
        try:
            await self._capsule.put_run_capture(capture)
        except aio.AioRpcError as exc:
            raise CaptureUnavailable(f"capsule: {exc.code().name}: {exc.details()}") from None

    async def get(self, run_id: str) -> capsule_pb2.RunCapture:
        try:
            return await self._capsule.get_run_capture(run_id)
        except aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise KeyError(run_id) from None
            raise CaptureUnavailable(f"capsule: {exc.code().name}: {exc.details()}") from None


@dataclass(frozen=True)
class Snapshot:
    files: dict[str, str]
    total_bytes: int
    #: why there is no snapshot ("" = there is one)
    skipped: str
    #: paths left out: symlinks (never followed), binary or non-UTF-8 files
    left_out: tuple[str, ...] = ()


def snapshot_workspace(root: Path, max_bytes: int) -> Snapshot:
    """The text files under `root` (relative '/' paths), redacted.

    Blocking file I/O. Directories are walked without following links;
    every file is opened with O_NOFOLLOW and checked to be a regular file.
    Over `max_bytes` in all, there is no snapshot and `skipped` says why.
    """
    files: dict[str, str] = {}
    left_out: list[str] = []
    total = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = Path(dirpath).relative_to(root)
        dirnames[:] = sorted(
            d
            for d in dirnames
            if d not in SKIP_NAMES and _utf8(d) and not os.path.islink(os.path.join(dirpath, d))
        )
        for name in sorted(filenames):
            rel = (rel_dir / name).as_posix()
            if not _utf8(name):
                # Not UTF-8 (os.walk's surrogate escapes): no protobuf string carries it.
                left_out.append(rel.encode("utf-8", "backslashreplace").decode())
                continue
            # At most one byte over the budget is read: a huge file is not loaded whole.
            data = _read_regular(os.path.join(dirpath, name), max_bytes - total + 1)
            if data is None or b"\0" in data:
                left_out.append(rel)
                continue
            total += len(data)
            if total > max_bytes:
                return Snapshot(
                    {},
                    total,
                    f"the workspace's text files exceed capture.max_workspace_bytes ({max_bytes})",
                )
            try:
                files[rel] = redact_text(data.decode("utf-8"))
            except UnicodeDecodeError:
                left_out.append(rel)
    return Snapshot(files, total, "", tuple(left_out))


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _read_regular(path: str, limit: int) -> bytes | None:
    """A regular file's first `limit` bytes; None for a symlink (never followed)
    or anything else."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(max(limit, 0))
    finally:
        os.close(fd)


class RunCapture:
    """The capture of one run: `begin` after the first build, `fixed` at a fix."""

    def __init__(
        self,
        store: CaptureStore,
        disk: Disk,
        max_bytes: int,
        note: Callable[[str], None],
        run_id: str,
        session_id: str,
    ):
        self._store = store
        self._disk = disk
        self._max_bytes = max_bytes
        self._note = note
        self._run_id = run_id
        self._session_id = session_id
        self._started_us = time.time_ns() // 1000
        self.stored = False

    async def begin(
        self, scratch: Scratch, state: CompileOutcome, build_profile: str, verify_profile: str
    ) -> None:
        """Snapshot the workspace's copy (on the runs' file threads, finished
        before a cancel lets the copy go) and store it with the build's errors."""
        snap = await self._disk.run(snapshot_workspace, scratch.root, self._max_bytes)
        msg = capsule_pb2.RunCapture(
            run_id=self._run_id,
            session_id=self._session_id,
            workspace=str(scratch.workspace),
            skipped=snap.skipped,
            build_profile=build_profile,
            verify_profile=verify_profile,
        )
        msg.started_at.FromMicroseconds(self._started_us)
        for rel, content in sorted(snap.files.items()):
            msg.files.add(path=rel, content=content)
        for d in state.diagnostics.errors:
            span = d.primary
            msg.errors.add(
                code=d.code or "",
                message=redact_text(d.message)[:8192],
                file=span.file if span else "",
                line=span.line_start if span else 0,
                column=span.column_start if span else 0,
            )
        if snap.skipped:
            self._note(f"workspace not captured: {snap.skipped}")
        try:
            await self._store.put(msg)
        except CaptureUnavailable as exc:
            self._note(f"workspace capture not stored ({exc})")
            return
        self.stored = not snap.skipped

    async def fixed(self, scratch: Scratch, fixed_by: int, diff: str) -> None:
        """Store the verified fix: its `diff` (the run result's, computed once) and
        the fixed content of every changed file."""
        if not self.stored:
            return
        msg = capsule_pb2.RunCapture(
            run_id=self._run_id, fixed=True, fixed_by=FIXED_BY.get(fixed_by, "")
        )
        msg.started_at.FromMicroseconds(self._started_us)
        msg.finished_at.GetCurrentTime()
        msg.diff = redact_text(diff)
        for rel, (_, after) in scratch.changed().items():
            if after is None:
                msg.fix_files.add(path=rel, deleted=True)
            else:
                msg.fix_files.add(path=rel, content=redact_text(after.decode("utf-8", "replace")))
        try:
            await self._store.put(msg)
        except CaptureUnavailable as exc:
            self._note(f"fix capture not stored ({exc})")


async def start_capture(
    store: CaptureStore | None,
    disk: Disk,
    policy: Policy,
    spec: RunSpec,
    scratch: Scratch,
    state: CompileOutcome,
    note: Callable[[str], None],
) -> RunCapture | None:
    """The run's capture, its start stored; None unless capture.mode = full_io
    (and for bakeoff trials)."""
    # A bakeoff trial's crate is a suite's task already, not the user's corpus.
    if store is None or policy.capture.mode != "full_io" or spec.bakeoff_run_id:
        return None
    capture = RunCapture(
        store, disk, policy.capture.max_workspace_bytes, note, spec.run_id, spec.session_id
    )
    verify = spec.verify.profile if spec.verify is not None else ""
    await capture.begin(scratch, state, spec.build.profile, verify)
    return capture
