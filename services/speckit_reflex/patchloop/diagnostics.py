"""rustc's JSON diagnostics, as cargo prints them with --message-format=json.

Cargo writes one JSON object per line; those with reason "compiler-message"
carry a rustc diagnostic. Everything else on stdout (artifacts, build-script
output, build-finished) and any line that is not JSON is skipped, so a build
command that prints plain text simply yields no diagnostics.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Span:
    """A located piece of source, 1-based lines and columns as rustc gives them."""

    file: str
    line_start: int
    line_end: int
    column_start: int
    column_end: int
    byte_start: int
    byte_end: int
    is_primary: bool
    label: str | None = None
    suggested_replacement: str | None = None
    applicability: str | None = None


@dataclass(frozen=True)
class Diagnostic:
    """One rustc diagnostic with its children (notes, helps and suggestions)."""

    level: str
    message: str
    code: str | None
    spans: tuple[Span, ...]
    children: tuple[Diagnostic, ...] = ()
    rendered: str | None = None

    @property
    def primary(self) -> Span | None:
        for s in self.spans:
            if s.is_primary:
                return s
        return self.spans[0] if self.spans else None

    def suggestions(self) -> list[Span]:
        """Every span (here or in children) that proposes a replacement."""
        out = [s for s in self.spans if s.suggested_replacement is not None]
        for child in self.children:
            out.extend(child.suggestions())
        return out


@dataclass
class BuildDiagnostics:
    """What a build printed, reduced to diagnostics and counts."""

    diagnostics: list[Diagnostic] = field(default_factory=list)
    # Artifacts cargo found up to date / (re)built: how warm the build was.
    units_fresh: int = 0
    units_built: int = 0

    @property
    def errors(self) -> list[Diagnostic]:
        return [
            d for d in self.diagnostics if d.level in ("error", "error: internal compiler error")
        ]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.level == "warning"]


def _span(raw: dict[str, Any]) -> Span:
    return Span(
        file=str(raw.get("file_name", "")),
        line_start=int(raw.get("line_start", 0)),
        line_end=int(raw.get("line_end", 0)),
        column_start=int(raw.get("column_start", 0)),
        column_end=int(raw.get("column_end", 0)),
        byte_start=int(raw.get("byte_start", 0)),
        byte_end=int(raw.get("byte_end", 0)),
        is_primary=bool(raw.get("is_primary", False)),
        label=raw.get("label"),
        suggested_replacement=raw.get("suggested_replacement"),
        applicability=raw.get("suggestion_applicability"),
    )


def parse_diagnostic(raw: dict[str, Any]) -> Diagnostic:
    """A rustc diagnostic object (the "message" of a compiler-message line)."""
    code = raw.get("code")
    return Diagnostic(
        level=str(raw.get("level", "")),
        message=str(raw.get("message", "")),
        code=code.get("code") if isinstance(code, dict) else None,
        spans=tuple(_span(s) for s in raw.get("spans") or ()),
        children=tuple(parse_diagnostic(c) for c in raw.get("children") or ()),
        rendered=raw.get("rendered"),
    )


def parse_cargo_output(stdout: str) -> BuildDiagnostics:
    """Diagnostics from cargo's JSON message stream; duplicates are dropped.

    Cargo can report the same diagnostic twice (e.g. lib and test targets of
    `cargo test --no-run`); counting it once keeps error counts honest.
    """
    out = BuildDiagnostics()
    seen: set[str] = set()
    for line in stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        reason = obj.get("reason")
        if reason == "compiler-artifact":
            if obj.get("fresh"):
                out.units_fresh += 1
            else:
                out.units_built += 1
        elif reason == "compiler-message" and isinstance(obj.get("message"), dict):
            msg = obj["message"]
            key = msg.get("rendered") or json.dumps(msg, sort_keys=True)
            if key in seen:
                continue
            seen.add(key)
            out.diagnostics.append(parse_diagnostic(msg))
    return out
