"""A suite's version as a digest of its tasks: two corpora under one name
(a re-harvest, an edited task) never share one, so their verdicts never mix."""

from __future__ import annotations

import hashlib
from pathlib import Path

from speckit_reflex.bakeoff.suite import Suite


def _files(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink() and "target" not in p.relative_to(root).parts
    )


def suite_digest(suite: Suite) -> str:
    """sha256 (hex) over every task's id, category and crate/ and fix/ files."""
    h = hashlib.sha256()
    for task in sorted(suite.tasks, key=lambda t: t.id):
        h.update(f"task\0{task.id}\0{task.category}\0".encode())
        for label, root in (("crate", task.crate_dir), ("fix", task.fix_dir)):
            for path in _files(root):
                data = path.read_bytes()
                rel = path.relative_to(root).as_posix()
                h.update(f"{label}\0{rel}\0{len(data)}\0".encode())
                h.update(data)
    return h.hexdigest()
