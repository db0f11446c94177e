"""A build step's outcome, and rustc's own machine-applicable fixes.

`Compiler` runs the build command in the sandbox on the scratch copy and turns
cargo's JSON output into diagnostics. A command that prints no JSON (a custom
build command, a failing `cargo test`) still yields one synthetic error that
carries the tail of its output, so a failed build is never mistaken for a
clean one and the model still sees why it failed.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from speckit_reflex.patchloop.buildcache import toolchain_id
from speckit_reflex.patchloop.diagnostics import (
    BuildDiagnostics,
    Diagnostic,
    Span,
    parse_cargo_output,
)
from speckit_reflex.patchloop.patch import PatchRejected
from speckit_reflex.patchloop.sandbox import BuildResult, BuildRunner
from speckit_reflex.patchloop.workspace import Scratch
from speckit_reflex.v1 import patchloop_pb2

OUTPUT_TAIL_CHARS = 2000


@dataclass
class CompileOutcome:
    result: BuildResult
    diagnostics: BuildDiagnostics

    @property
    def clean(self) -> bool:
        return self.result.returncode == 0 and not self.diagnostics.errors

    @property
    def error_count(self) -> int:
        return len(self.diagnostics.errors)

    def to_proto(self, verify: bool) -> patchloop_pb2.CompileFinished:
        msg = patchloop_pb2.CompileFinished(
            error_count=self.error_count,
            warning_count=len(self.diagnostics.warnings),
            duration_ms=self.result.duration_ms,
            timed_out=self.result.timed_out,
            verify=verify,
            success=self.clean,
            units_fresh=self.diagnostics.units_fresh,
            units_built=self.diagnostics.units_built,
        )
        for d in self.diagnostics.errors + self.diagnostics.warnings:
            span = d.primary
            msg.diagnostics.add(
                level=d.level,
                code=d.code or "",
                message=d.message,
                file=span.file if span else "",
                line=span.line_start if span else 0,
                column=span.column_start if span else 0,
            )
        return msg


class Compiler:
    """Builds a scratch copy with the sandboxed runner and reads the diagnostics."""

    def __init__(self, runner: BuildRunner):
        self._runner = runner
        self._toolchain: asyncio.Future[str] | None = None

    async def sandbox_note(self) -> str:
        """The sandbox layers missing on this host, in one line ("" when none is)."""
        await self._runner.probe()
        return self._runner.isolation_note

    async def toolchain(self) -> str:
        """`rustc -vV` as builds see it (part of the build cache key), asked once
        (concurrent first callers share the one question)."""
        if self._toolchain is None:
            # The target dir is irrelevant to rustc's version; the environment
            # (PATH, RUSTUP_TOOLCHAIN) is the builds' own.
            env = self._runner.environment(Path(tempfile.gettempdir()))
            self._toolchain = asyncio.ensure_future(asyncio.to_thread(toolchain_id, env))
        return await asyncio.shield(self._toolchain)

    async def sandbox_layers(self) -> list[patchloop_pb2.SandboxLayer]:
        await self._runner.probe()
        return self._runner.layers()

    async def compile(
        self, command: Sequence[str], scratch: Scratch, timeout_s: float
    ) -> CompileOutcome:
        result = await self._runner.run(command, scratch.root, scratch.target_dir, timeout_s)
        diags = parse_cargo_output(result.stdout)
        if result.returncode != 0 and not diags.errors:
            if result.timed_out:
                text = f"the build did not finish within {timeout_s:g} s and was killed"
            else:
                tail = (result.stdout + "\n" + result.stderr).strip()[-OUTPUT_TAIL_CHARS:]
                text = f"`{' '.join(command)}` failed (exit {result.returncode}):\n{tail}"
            diags.diagnostics.append(
                Diagnostic(
                    level="error", message=text.splitlines()[0], code=None, spans=(), rendered=text
                )
            )
        return CompileOutcome(result, diags)


def machine_applicable_edits(errors: list[Diagnostic], scratch: Scratch) -> dict[str, str]:
    """New file contents with every MachineApplicable suggestion of `errors` applied.

    Suggestions are byte ranges; overlapping ones are skipped (the first
    wins), and spans outside the workspace are ignored.
    """
    by_file: dict[str, list[Span]] = {}
    for d in errors:
        for s in d.suggestions():
            if s.applicability != "MachineApplicable":
                continue
            try:
                rel = scratch.resolve(s.file)
            except PatchRejected:
                continue
            by_file.setdefault(rel, []).append(s)
    planned: dict[str, str] = {}
    for rel, spans in by_file.items():
        text = scratch.read_text(rel)
        if text is None:
            continue
        data = text.encode("utf-8")
        chosen: list[Span] = []
        for s in sorted(set(spans), key=lambda s: (s.byte_start, s.byte_end)):
            if chosen and s.byte_start < chosen[-1].byte_end:
                continue
            if 0 <= s.byte_start <= s.byte_end <= len(data):
                chosen.append(s)
        for s in reversed(chosen):
            data = (
                data[: s.byte_start]
                + (s.suggested_replacement or "").encode("utf-8")
                + data[s.byte_end :]
            )
        new = data.decode("utf-8")
        if new != text:
            planned[rel] = new
    return planned
