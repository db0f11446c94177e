"""Harvest: captured PatchLoop runs that ended fixed become the tasks of a
private suite, in the layout of reflex_patchloop_v1 (manifest.toml,
tasks/<id>/crate/ as captured, tasks/<id>/fix/ the verified fix), with
harvest.json recording where each task came from.

Runs are deduplicated by error signature (the error codes of the run's
first build and its normalised primary span); of runs that share one, the
newest is kept. Everything comes from Capsule and PatchLoop through their
RPCs; nothing here reads a database.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from speckit_reflex.v1 import capsule_pb2

HARVEST_FILE = "harvest.json"
SUITE_DESCRIPTION = (
    "Harvested from captured PatchLoop runs: each task is a workspace as a run "
    "found it, fixed by the fix that run verified."
)
# Error codes to the categories of reflex_patchloop_v1 (the rest are "misc").
_CATEGORIES = {
    "type_mismatch": {"E0308", "E0614", "E0369", "E0604", "E0606"},
    "borrow_move": {"E0382", "E0499", "E0502", "E0505", "E0506", "E0507", "E0515", "E0716"},
    "lifetimes": {"E0106", "E0597", "E0621", "E0495", "E0623", "E0700"},
    "missing_import_or_item": {"E0412", "E0425", "E0432", "E0433", "E0599", "E0609", "E0560"},
    "trait_bounds": {"E0277", "E0038", "E0119"},
    "wrong_arity": {"E0061", "E0107", "E0050"},
    "mutability": {"E0596", "E0384", "E0594"},
    "option_result": set(),
    "pattern_exhaustiveness": {"E0004", "E0005", "E0023", "E0026", "E0027"},
}
_SPACE = re.compile(r"\s+")
_NUMBER = re.compile(r"\d+")
# A task id is a folder name: of a captured code (data from Capsule) only these stay.
_UNSAFE_IN_ID = re.compile(r"[^a-z0-9_]")


class HarvestError(Exception):
    """Nothing can be harvested, with why."""


@dataclass(frozen=True)
class Signature:
    codes: tuple[str, ...]
    span: str

    @property
    def key(self) -> str:
        text = "\0".join((*self.codes, "|", self.span))
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def normalised_span(error: capsule_pb2.CapturedError, files: dict[str, str]) -> str:
    """Where the first error points, free of what shifts between runs: the
    file and the text of its primary line with whitespace collapsed (not the
    line number); without the file's text, its message with numbers masked."""
    lines = files.get(error.file, "").splitlines()
    if 0 < error.line <= len(lines):
        return f"{error.file}: {_SPACE.sub(' ', lines[error.line - 1]).strip()}"
    return f"{error.file}: {_NUMBER.sub('N', _SPACE.sub(' ', error.message)).strip()}"


def error_signature(capture: capsule_pb2.RunCapture) -> Signature:
    """Error codes of the run's first build, sorted, and its normalised primary span."""
    codes = tuple(sorted({e.code or "none" for e in capture.errors}))
    files = {f.path: f.content for f in capture.files}
    span = normalised_span(capture.errors[0], files) if capture.errors else ""
    return Signature(codes, span)


def category(codes: tuple[str, ...]) -> str:
    for name, known in _CATEGORIES.items():
        if any(c in known for c in codes):
            return name
    return "misc"


def task_id(sig: Signature) -> str:
    code = sig.codes[0].lower() if sig.codes and sig.codes[0] != "none" else "err"
    return f"h_{_UNSAFE_IN_ID.sub('_', code)[:32] or 'err'}_{sig.key}"


def safe_path(root: Path, rel: str) -> Path:
    """`rel` under `root`; anything else (absolute, `..`) is refused."""
    pure = PurePosixPath(rel)
    if not rel or pure.is_absolute() or any(p in ("..", "") for p in rel.split("/")):
        raise HarvestError(f"refusing to write {rel!r}: not a relative path inside the task")
    return root.joinpath(*pure.parts)


@dataclass
class Candidate:
    """One captured fixed run kept for its signature (the newest)."""

    capture: capsule_pb2.RunCapture
    signature: Signature
    replaces: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return task_id(self.signature)


def deduplicate(captures: list[capsule_pb2.RunCapture]) -> list[Candidate]:
    """One candidate per error signature, the newest run of each (by start time)."""
    newest_first = sorted(
        captures, key=lambda c: (c.started_at.ToMicroseconds(), c.run_id), reverse=True
    )
    kept: dict[str, Candidate] = {}
    for c in newest_first:
        sig = error_signature(c)
        if sig.key in kept:
            kept[sig.key].replaces.append(c.run_id)
        else:
            kept[sig.key] = Candidate(c, sig)
    return list(kept.values())


def _toml_str(text: str) -> str:
    # A TOML basic string: JSON's escapes are valid TOML escapes, and TOML
    # forbids a raw DEL, which JSON leaves as it is.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _description(c: capsule_pb2.RunCapture) -> str:
    first = c.errors[0] if c.errors else None
    text = f"{first.code or 'error'}: {first.message}" if first else "captured compile error"
    return _SPACE.sub(" ", text).strip()[:200] or "captured compile error"


def _date(ts: Any) -> str:
    return datetime.fromtimestamp(ts.ToMicroseconds() / 1e6, UTC).isoformat(timespec="seconds")


def write_suite(out: Path, name: str, tasks: list[Candidate], provenance: dict[str, Any]) -> None:
    """Write the suite folder: manifest.toml, tasks/<id>/{crate,fix}/, harvest.json.

    An existing folder is replaced only when an earlier harvest wrote it.
    """
    if out.exists() and any(out.iterdir()):
        if not (out / HARVEST_FILE).is_file():
            raise HarvestError(f"{out} exists and was not written by a harvest; pick another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "[suite]",
        f"name = {_toml_str(name)}",
        "version = 1",
        f"description = {_toml_str(SUITE_DESCRIPTION)}",
        "",
    ]
    for t in tasks:
        c = t.capture
        root = out / "tasks" / t.id
        for f in c.files:
            dest = safe_path(root / "crate", f.path)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(f.content, encoding="utf-8")
        for f in c.fix_files:
            dest = safe_path(root / "fix", f.path)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(f.content, encoding="utf-8")
        entry = c.errors[0].file if c.errors and c.errors[0].file else "src/lib.rs"
        lines += [
            "[[task]]",
            f"id = {_toml_str(t.id)}",
            f"category = {_toml_str(category(t.signature.codes))}",
            f"difficulty = {_toml_str('easy' if c.fixed_by == 'compiler' else 'medium')}",
            f"description = {_toml_str(_description(c))}",
            f"entry = {_toml_str(entry)}",
            f"machine_applicable = {'true' if c.fixed_by == 'compiler' else 'false'}",
            "",
        ]
    (out / "manifest.toml").write_text("\n".join(lines), encoding="utf-8")
    (out / HARVEST_FILE).write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")


def provenance_entry(t: Candidate) -> dict[str, Any]:
    c = t.capture
    return {
        "id": t.id,
        "run_id": c.run_id,
        "date": _date(c.started_at),
        "error_codes": list(t.signature.codes),
        "primary_span": t.signature.span,
        "signature": t.signature.key,
        "fixed_by": c.fixed_by,
        "build_profile": c.build_profile,
        "verify_profile": c.verify_profile,
        "replaces": list(t.replaces),
    }


def fix_problem(c: capsule_pb2.RunCapture) -> str:
    """Why a capture cannot become a task by its content alone ("" = it can)."""
    if not c.files:
        return f"no workspace captured{': ' + c.skipped if c.skipped else ''}"
    if not c.errors:
        return "no errors recorded for the run's first build"
    if not c.fix_files:
        return "no fix recorded"
    if any(f.deleted for f in c.fix_files):
        return "the fix removes files, which a suite's fix/ overlay cannot express"
    return ""
