"""The patch prompt, laid out for the server's prefix cache.

Order matters: the system instructions and patch rules (identical for every
run), then the file excerpts of the last good state, then its diagnostics,
and only at the very end the feedback on earlier failed attempts. A failed
patch is reverted, so on attempt 2+ everything but that tail is
byte-identical to attempt 1 and the server reuses its cached prefix
(SGLang RadixAttention, vLLM prefix caching, llama.cpp cache_prompt).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from speckit_reflex.patchloop.diagnostics import Diagnostic
from speckit_reflex.patchloop.patch import PatchBounds

# The format is described, never shown: a small model copies any sample
# object it is given (SmolLM2-135M replied with the sample edit verbatim, file
# name included, on every task of the suite; docs/benchmarks.md). The system
# message is identical on every call so the server's prefix cache keeps it.
SYSTEM_PROMPT = """You fix Rust compile errors. Reply with one JSON object and nothing else.
The object has one key, "edits": a list of at most {max_edits} edit(s). Each edit is an object:
- "file": the path of the file to change, exactly as it is written after FILE in the message.
- Then either "line_start", "line_end" and "replacement": the first and last line number of the lines to replace
  (1-based, inclusive, as numbered in the message) and the new text of those whole lines;
- or "search" and "replace": a piece of text copied exactly from the file (it must occur there once) and its new text.
Rules:
- The numbers and the "|" column at the start of each shown line are not part of the source: never copy them.
- Keep the original indentation. Change as little as possible: fix the cause the compiler names.
- A replacement or replace text is at most {replacement_chars} characters."""

# Files shorter than this are shown whole; longer ones as windows around errors.
WHOLE_FILE_LINES = 150
CONTEXT_LINES = 12
MAX_DIAGNOSTICS = 6
MAX_RENDERED_CHARS = 1200


@dataclass(frozen=True)
class FailedAttempt:
    """What the model is told about an earlier attempt that did not fix the build."""

    attempt: int
    reason: str
    detail: str


def _windows(line_numbers: list[int], total: int) -> list[tuple[int, int]]:
    if total <= WHOLE_FILE_LINES:
        return [(1, total)]
    spans: list[tuple[int, int]] = []
    for n in sorted(set(line_numbers)):
        lo, hi = max(1, n - CONTEXT_LINES), min(total, n + CONTEXT_LINES)
        if spans and lo <= spans[-1][1] + 1:
            spans[-1] = (spans[-1][0], max(hi, spans[-1][1]))
        else:
            spans.append((lo, hi))
    return spans or [(1, min(total, 2 * CONTEXT_LINES))]


def file_excerpts(
    errors: list[Diagnostic], read: Callable[[str], str | None], resolve: Callable[[str], str]
) -> str:
    """Numbered excerpts of every workspace file an error points at."""
    lines_by_file: dict[str, list[int]] = {}
    for d in errors:
        for span in d.spans:
            try:
                rel = resolve(span.file)
            except Exception:
                # Spans into the standard library or other crates are not ours to show.
                continue
            lines_by_file.setdefault(rel, []).extend(range(span.line_start, span.line_end + 1))
    parts: list[str] = []
    for rel in sorted(lines_by_file):
        text = read(rel)
        if text is None:
            continue
        lines = text.splitlines()
        parts.append(f"FILE {rel}")
        for lo, hi in _windows(lines_by_file[rel], len(lines)):
            if lo > 1:
                parts.append("   ...")
            parts.extend(f"{n:>4} | {lines[n - 1]}" for n in range(lo, hi + 1))
        parts.append("")
    return "\n".join(parts)


def render_diagnostics(errors: list[Diagnostic], scratch_prefix: str) -> str:
    """The errors as rustc renders them, scratch paths removed, bounded in size."""
    out: list[str] = []
    for d in errors[:MAX_DIAGNOSTICS]:
        text = d.rendered or f"{d.level}: {d.message}"
        text = text.replace(scratch_prefix, "").rstrip()
        if len(text) > MAX_RENDERED_CHARS:
            text = text[:MAX_RENDERED_CHARS] + "\n[...]"
        out.append(text)
    if len(errors) > MAX_DIAGNOSTICS:
        out.append(f"(and {len(errors) - MAX_DIAGNOSTICS} more errors)")
    return "\n\n".join(out)


def build_messages(
    bounds: PatchBounds,
    excerpts: str,
    diagnostics: str,
    feedback: list[FailedAttempt],
) -> list[dict[str, str]]:
    """Chat messages: stable system + context prefix, attempt feedback last."""
    system = SYSTEM_PROMPT.format(
        max_edits=bounds.max_edits, replacement_chars=bounds.replacement_chars
    )
    files = [
        line.removeprefix("FILE ") for line in excerpts.splitlines() if line.startswith("FILE ")
    ]
    # The real path of the file to edit comes first, by name, so it is the one the model writes.
    target = f"The errors are in {' and '.join(files)}: edit {'that file' if len(files) == 1 else 'those files'}.\n\n"
    user = f"{target if files else ''}{excerpts}\nCOMPILER ERRORS\n{diagnostics}\n"
    if feedback:
        notes = "\n".join(f"- attempt {f.attempt}: {f.reason}: {f.detail}" for f in feedback[-4:])
        user += (
            f"\nEARLIER ATTEMPTS FAILED (they were undone; the files above are current)\n{notes}\n"
        )
    user += "\nReply with the JSON patch."
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]
