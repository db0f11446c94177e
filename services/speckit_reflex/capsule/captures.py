"""Run captures: the workspace a PatchLoop run started from and the fix it
verified, stored only under capture.mode = full_io (the harvest's input).

Every field is hostile: paths must be relative and stay inside the workspace,
texts are bounded and redacted once more here (PatchLoop redacts first).
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any

from speckit_reflex.errors import FailedPrecondition, InvalidArgument
from speckit_reflex.runtime.redact import has_secret, redact_text
from speckit_reflex.v1 import capsule_pb2, common_pb2

# One capture's files in all (the policy's max_workspace_bytes is capped below it).
MAX_CAPTURE_BYTES = 16_000_000
MAX_FILES = 20_000
MAX_ERRORS = 1_000
FIXED_BY = frozenset({"", "compiler", "reflex", "cloud"})
# A stored capture is sent whole by GetRunCapture: merged, its parts (each a
# message under the 16 MiB limit) must still fit one reply. A list page
# stops adding records at LIST_PAGE_BYTES (at least one per page).
MAX_STORED_BYTES = 15_000_000
LIST_PAGE_BYTES = 8_000_000
_EMPTY_ROW: dict[str, Any] = {
    "session_id": "",
    "workspace": "",
    "snapshot_bytes": 0,
    "skipped": "",
    "build_profile": "",
    "verify_profile": "",
    "fixed": False,
    "fixed_by": "",
    "diff": "",
    "finished_us": None,
    "errors": None,
    "files": None,
    "fix_files": None,
}
# rustc's codes (E0308), lint names (unused_variables, clippy::needless_return):
# a code names a harvested task's folder, so it is never a path.
_ERROR_CODE = re.compile(r"[A-Za-z0-9_:-]*")


def refuse_unless_full_io(mode: str) -> None:
    """FAILED_PRECONDITION naming the mode: workspaces are captured under full_io only."""
    if mode != "full_io":
        raise FailedPrecondition(
            f"capture.mode is {mode!r}: workspaces and fixes are captured only under "
            'capture.mode = "full_io" (set it in the policy, let the agent run, then harvest)',
            reason=common_pb2.ERROR_REASON_CAPTURE_OFF,
            metadata={"capture_mode": mode},
        )


def checked_path(path: str, field: str) -> str:
    """A relative '/'-separated path inside the workspace, or InvalidArgument."""
    pure = PurePosixPath(path)
    if (
        not path
        or "\\" in path
        or pure.is_absolute()
        or any(part in ("..", ".", "") for part in path.split("/"))
        # What a file system can hold (NAME_MAX, PATH_MAX): CheckPatch lays it out.
        or any(len(part.encode()) > 255 for part in path.split("/"))
        or len(path.encode()) > 4000
    ):
        raise InvalidArgument(
            f"{field}: {path[:200]!r} is not a relative path inside the workspace", field=field
        )
    if has_secret(path):
        # A path keys the capture and names a file of a harvested suite: not rewritten.
        raise InvalidArgument(
            f"{field}: {redact_text(path[:200])!r} holds a credential-shaped name", field=field
        )
    return path


def _files(files: Any, field: str, allow_deleted: bool) -> tuple[dict[str, str | None], int]:
    out: dict[str, str | None] = {}
    total = 0
    if len(files) > MAX_FILES:
        raise InvalidArgument(
            f"{field}: {len(files)} files exceed the limit of {MAX_FILES}", field=field
        )
    for i, f in enumerate(files):
        path = checked_path(f.path, f"{field}[{i}].path")
        if path in out:
            raise InvalidArgument(
                f"{field}[{i}].path: {path[:200]!r} given twice", field=f"{field}[{i}].path"
            )
        if f.deleted:
            if not allow_deleted:
                raise InvalidArgument(
                    f"{field}[{i}]: a captured workspace has no deleted files",
                    field=f"{field}[{i}].deleted",
                )
            out[path] = None
            continue
        total += len(f.content.encode())
        out[path] = redact_text(f.content)
    if total > MAX_CAPTURE_BYTES:
        raise InvalidArgument(
            f"{field}: {total} bytes exceed the limit of {MAX_CAPTURE_BYTES}", field=field
        )
    return out, total


def capture_row(c: capsule_pb2.RunCapture, now_us: int) -> dict[str, Any]:
    """The columns this part of a capture sets (a start part, an end part, or both)."""
    if not c.run_id:
        raise InvalidArgument("run_id is required", field="run_id")
    row: dict[str, Any] = {
        "run_id": c.run_id,
        "started_us": c.started_at.ToMicroseconds() if c.HasField("started_at") else now_us,
    }
    if c.files or c.skipped or c.errors:
        files, total = _files(c.files, "files", allow_deleted=False)
        if len(c.errors) > MAX_ERRORS:
            raise InvalidArgument(
                f"errors: {len(c.errors)} exceed the limit of {MAX_ERRORS}", field="errors"
            )
        for i, e in enumerate(c.errors):
            if not _ERROR_CODE.fullmatch(e.code):
                raise InvalidArgument(
                    f"errors[{i}].code: {e.code[:64]!r} is not an error code "
                    "(letters, digits, '_', ':', '-')",
                    field=f"errors[{i}].code",
                )
        row.update(
            session_id=redact_text(c.session_id),
            workspace=redact_text(c.workspace),
            files=files or None,
            snapshot_bytes=total,
            skipped=redact_text(c.skipped),
            errors=[
                {
                    "code": e.code,
                    "message": redact_text(e.message),
                    "file": redact_text(e.file),
                    "line": e.line,
                    "column": e.column,
                }
                for e in c.errors
            ],
            build_profile=c.build_profile,
            verify_profile=c.verify_profile,
        )
    if c.fixed:
        if c.fixed_by not in FIXED_BY:
            raise InvalidArgument(
                f"fixed_by {c.fixed_by[:16]!r} is not compiler, reflex or cloud", field="fixed_by"
            )
        fix_files, _ = _files(c.fix_files, "fix_files", allow_deleted=True)
        if not fix_files:
            raise InvalidArgument(
                "fix_files: a fixed run names the files its fix changed", field="fix_files"
            )
        row.update(
            fixed=True,
            fixed_by=c.fixed_by,
            diff=redact_text(c.diff),
            fix_files=fix_files,
            finished_us=c.finished_at.ToMicroseconds() if c.HasField("finished_at") else now_us,
        )
    return row


def capture_proto(row: dict[str, Any]) -> capsule_pb2.RunCapture:
    """A stored capture as a RunCapture (files only when the row carries them)."""
    c = capsule_pb2.RunCapture(
        run_id=row["run_id"],
        session_id=row["session_id"],
        workspace=row["workspace"],
        snapshot_bytes=row["snapshot_bytes"],
        skipped=row["skipped"],
        build_profile=row["build_profile"],
        verify_profile=row["verify_profile"],
        fixed=bool(row["fixed"]),
        fixed_by=row["fixed_by"],
        diff=row["diff"],
    )
    c.started_at.FromMicroseconds(row["started_us"])
    if row["finished_us"] is not None:
        c.finished_at.FromMicroseconds(row["finished_us"])
    for e in row["errors"] or []:
        c.errors.add(**e)
    for path, content in sorted((row.get("files") or {}).items()):
        c.files.add(path=path, content=content)
    for path, content in sorted((row.get("fix_files") or {}).items()):
        if content is None:
            c.fix_files.add(path=path, deleted=True)
        else:
            c.fix_files.add(path=path, content=content)
    return c


def check_fits(stored: dict[str, Any] | None, row: dict[str, Any]) -> None:
    """InvalidArgument naming the part's field when the capture, `row` merged
    over what is `stored`, would not fit a GetRunCapture reply."""
    merged = {**_EMPTY_ROW, **(stored or {}), **row}
    size = capture_proto(merged).ByteSize()
    if size > MAX_STORED_BYTES:
        field = "fix_files" if "fix_files" in row else "files"
        raise InvalidArgument(
            f"{field}: the run's capture would hold {size} bytes with this part, over the "
            f"limit of {MAX_STORED_BYTES} (one reply)",
            field=field,
        )


def page_by_size(rows: list[dict[str, Any]]) -> tuple[list[capsule_pb2.RunCapture], int]:
    """The captures of `rows` that fit one list reply (at least one), and how many."""
    out: list[capsule_pb2.RunCapture] = []
    total = 0
    for row in rows:
        c = capture_proto(row)
        total += c.ByteSize()
        if out and total > LIST_PAGE_BYTES:
            break
        out.append(c)
    return out, len(out)
