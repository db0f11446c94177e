"""The directories under which PatchLoop opens workspaces (SPECKIT_WORKSPACE_ROOTS).

A run copies a workspace, runs its build scripts (sandboxed), shows its
sources to a model and may write a fix back, so a caller must not be able to
name any directory of the host. Paths are canonicalised (symlinks resolved)
before the check, so a link under a root that leads elsewhere is judged by
where it leads.

Default when the variable is unset or empty: the service's working directory
at start, and nothing else — what `speckit serve` run from a project folder
needs, and never the whole host: when that directory is `/`, there is no
default root and every run is refused until roots are configured.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from speckit_reflex.errors import PermissionDenied

ENV = "SPECKIT_WORKSPACE_ROOTS"


class WorkspaceRoots:
    def __init__(self, roots: Sequence[str | Path]):
        self.roots: tuple[Path, ...] = tuple(
            dict.fromkeys(Path(os.path.realpath(r)) for r in roots)
        )

    @classmethod
    def from_setting(cls, value: str, cwd: Path | None = None) -> WorkspaceRoots:
        """Roots from an os.pathsep-separated list; empty = the working directory unless it is `/`."""
        listed = [r for r in value.split(os.pathsep) if r.strip()]
        if listed:
            return cls(listed)
        here = Path(os.path.realpath(cwd or Path.cwd()))
        return cls([] if here == Path(here.anchor) else [here])

    def admit(self, workspace: str) -> Path:
        """The canonical path of `workspace` if it lies under a root (PermissionDenied otherwise)."""
        real = Path(os.path.realpath(workspace))
        for root in self.roots:
            if real == root or root in real.parents:
                return real
        if not self.roots:
            raise PermissionDenied(
                f"workspace: this server has no workspace roots; set {ENV} on the PatchLoop service"
            )
        raise PermissionDenied(
            f"workspace: {workspace!r} is outside the workspace roots of this server ({ENV})"
        )
