"""The patch a model returns: its JSON Schema, validation and planning.

A patch is a list of small located edits, never whole files (models do far
worse returning whole code blocks inside JSON): either a line range of a file
replaced by new text, or an exact search text replaced once. Every string and
the edit list are bounded, and the bounds are derived from `max_tokens`, so a
reply that follows the schema always fits inside the token budget.

This module is pure: it turns reply text into planned new file contents given
a way to read files. Writing them (and every path check) is the workspace's
job.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator

# A line range larger than this is not a "small located edit".
MAX_LINES_PER_EDIT = 40
MAX_LINE_NUMBER = 100_000
# Characters of JSON scaffolding around the strings of one edit, counted on
# the compact form with the longest numbers: {"file":"","line_start":100000,...}
_LINE_EDIT_OVERHEAD = len('{"file":"","line_start":100000,"line_end":100000,"replacement":""},')
_SEARCH_EDIT_OVERHEAD = len('{"file":"","search":"","replace":""},')
_ENVELOPE = len('{"edits":[]}')


class PatchRejected(Exception):
    """A patch (or one of its edits) that must not be applied; nothing was written."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class LineEdit:
    """Replace lines line_start..line_end (1-based, inclusive) of `file`."""

    file: str
    line_start: int
    line_end: int
    replacement: str


@dataclass(frozen=True)
class SearchReplace:
    """Replace the single exact occurrence of `search` in `file`."""

    file: str
    search: str
    replace: str


PatchEdit = LineEdit | SearchReplace


@dataclass(frozen=True)
class PatchBounds:
    """Size limits of a patch, derived from the reply's token budget."""

    max_edits: int
    file_chars: int
    replacement_chars: int
    search_chars: int
    replace_chars: int

    @classmethod
    def for_max_tokens(cls, max_tokens: int) -> PatchBounds:
        """Bounds under which the longest valid reply fits in `max_tokens`.

        Assumes a token covers at least one character (true of BPE vocabularies
        on ASCII source) and keeps a quarter of the budget for whitespace and
        escapes (a quote or newline is two characters in JSON).
        """
        budget = max(int(max_tokens * 0.75) - _ENVELOPE, 64)
        max_edits = 1 if budget < 500 else 2 if budget < 1000 else 3
        per_edit = budget // max_edits
        file_chars = max(16, min(80, per_edit // 4))
        replacement = max(8, per_edit - _LINE_EDIT_OVERHEAD - file_chars)
        text = max(16, per_edit - _SEARCH_EDIT_OVERHEAD - file_chars)
        search = max(8, text // 3)
        return cls(max_edits, file_chars, replacement, search, max(8, text - search))


def patch_schema(bounds: PatchBounds) -> dict[str, Any]:
    """The JSON Schema sent to the model server and checked again locally."""
    file_prop = {"type": "string", "minLength": 1, "maxLength": bounds.file_chars}
    line = {"type": "integer", "minimum": 1, "maximum": MAX_LINE_NUMBER}
    line_edit = {
        "type": "object",
        "properties": {
            "file": file_prop,
            "line_start": line,
            "line_end": line,
            "replacement": {"type": "string", "maxLength": bounds.replacement_chars},
        },
        "required": ["file", "line_start", "line_end", "replacement"],
        "additionalProperties": False,
    }
    search_replace = {
        "type": "object",
        "properties": {
            "file": file_prop,
            "search": {"type": "string", "minLength": 1, "maxLength": bounds.search_chars},
            "replace": {"type": "string", "maxLength": bounds.replace_chars},
        },
        "required": ["file", "search", "replace"],
        "additionalProperties": False,
    }
    return {
        "title": "rust_patch",
        "type": "object",
        "properties": {
            "edits": {
                "type": "array",
                "minItems": 1,
                "maxItems": bounds.max_edits,
                "items": {"anyOf": [line_edit, search_replace]},
            }
        },
        "required": ["edits"],
        "additionalProperties": False,
    }


# Schema keywords whose violation means "too big" rather than "malformed".
_SIZE_KEYWORDS = {"maxLength", "maxItems", "maximum"}


def parse_patch(content: str, schema: dict[str, Any]) -> list[PatchEdit]:
    """The edits of a reply, validated against `schema`.

    Raises PatchRejected with reason invalid_json (not a JSON document),
    edit_too_large (a size bound exceeded) or schema_violation.
    """
    if not content.strip():
        raise PatchRejected("invalid_json", "empty reply")
    try:
        doc = json.loads(content)
    except ValueError as exc:
        raise PatchRejected("invalid_json", f"not a JSON document: {exc}") from None
    validator = Draft202012Validator(schema)
    errors = list(validator.iter_errors(doc))
    if errors:
        # anyOf hides which branch was meant; its sub-errors carry the sizes.
        leaves = [c for e in errors for c in (e.context or [e])]
        for err in leaves:
            if err.validator in _SIZE_KEYWORDS:
                where = "/".join(str(p) for p in err.absolute_path)
                raise PatchRejected("edit_too_large", f"{where or 'patch'}: {err.message[:200]}")
        raise PatchRejected("schema_violation", errors[0].message[:300])
    edits: list[PatchEdit] = []
    for raw in doc["edits"]:
        if "search" in raw:
            edits.append(SearchReplace(raw["file"], raw["search"], raw["replace"]))
        else:
            edits.append(
                LineEdit(raw["file"], raw["line_start"], raw["line_end"], raw["replacement"])
            )
    return edits


def _as_lines(text: str) -> list[str]:
    if not text:
        return []
    return [line if line.endswith("\n") else line + "\n" for line in text.splitlines(keepends=True)]


def plan_file(path: str, original: str | None, edits: list[PatchEdit], allow_create: bool) -> str:
    """New content of one file after `edits` (all naming this file).

    Line numbers refer to the file as shown to the model (before any edit), so
    line edits are applied bottom-up; search/replace edits come after them.
    """
    if original is None:
        creatable = (
            allow_create
            and len(edits) == 1
            and isinstance(edits[0], LineEdit)
            and edits[0].line_start == 1
        )
        if not creatable:
            why = (
                "creating files is not allowed"
                if not allow_create
                else "a new file needs one edit at line 1"
            )
            raise PatchRejected("file_not_found", f"{path} does not exist ({why})")
        return edits[0].replacement if isinstance(edits[0], LineEdit) else ""
    lines = original.splitlines(keepends=True)
    line_edits = sorted((e for e in edits if isinstance(e, LineEdit)), key=lambda e: e.line_start)
    for e in line_edits:
        if e.line_end < e.line_start:
            raise PatchRejected(
                "line_range", f"{path}: line_end {e.line_end} < line_start {e.line_start}"
            )
        if e.line_end > len(lines):
            raise PatchRejected(
                "line_range",
                f"{path}: lines {e.line_start}-{e.line_end} beyond its {len(lines)} lines",
            )
        if e.line_end - e.line_start + 1 > MAX_LINES_PER_EDIT:
            raise PatchRejected(
                "edit_too_large",
                f"{path}: {e.line_end - e.line_start + 1} lines > {MAX_LINES_PER_EDIT}",
            )
    for before, after in itertools.pairwise(line_edits):
        if after.line_start <= before.line_end:
            raise PatchRejected(
                "overlapping_edits",
                f"{path}: lines {before.line_start}-{before.line_end} and {after.line_start}-{after.line_end}",
            )
    for e in reversed(line_edits):
        lines[e.line_start - 1 : e.line_end] = _as_lines(e.replacement)
    text = "".join(lines)
    for search in (e for e in edits if isinstance(e, SearchReplace)):
        count = text.count(search.search)
        if count == 0:
            raise PatchRejected(
                "anchor_mismatch", f"{path}: search text not found: {search.search[:80]!r}"
            )
        if count > 1:
            raise PatchRejected(
                "anchor_ambiguous",
                f"{path}: search text occurs {count} times: {search.search[:80]!r}",
            )
        text = text.replace(search.search, search.replace, 1)
    return text


def plan_patch(
    edits: list[PatchEdit],
    resolve: Callable[[str], str],
    read: Callable[[str], str | None],
    allow_create: bool,
) -> dict[str, str]:
    """New contents by workspace-relative path; raises PatchRejected, writes nothing.

    `resolve` maps an edit's path to a checked workspace-relative path (and
    raises PatchRejected for an escape); `read` returns a file's text or None.
    """
    by_file: dict[str, list[PatchEdit]] = {}
    for e in edits:
        by_file.setdefault(resolve(e.file), []).append(e)
    planned: dict[str, str] = {}
    for path, file_edits in by_file.items():
        original = read(path)
        new = plan_file(path, original, file_edits, allow_create)
        if new != original:
            planned[path] = new
    if not planned:
        raise PatchRejected("no_change", "the patch leaves every file as it was")
    return planned
