"""A suite's version as a digest of its tasks: two corpora under one name
(a re-harvest, an edited task) never share one, so their verdicts never mix."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from importlib.resources.abc import Traversable

from speckit_reflex.bakeoff.suite import Suite

SKIP = frozenset({"target"})


def _files(root: Traversable, prefix: str = "") -> Iterator[tuple[str, Traversable]]:
    """(relative path, file) under `root`, sorted by name, build output left out."""
    if not root.is_dir():
        return
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        rel = f"{prefix}{entry.name}"
        if entry.is_dir():
            if entry.name not in SKIP:
                yield from _files(entry, rel + "/")
        elif entry.is_file():
            yield rel, entry


def suite_digest(suite: Suite) -> str:
    """sha256 (hex) over every task's id, category and crate/ and fix/ files."""
    h = hashlib.sha256()
    for task in sorted(suite.tasks, key=lambda t: t.id):
        h.update(f"task\0{task.id}\0{task.category}\0".encode())
        for label, root in (("crate", task.crate_dir), ("fix", task.fix_dir)):
            for rel, entry in _files(root):
                data = entry.read_bytes()
                h.update(f"{label}\0{rel}\0{len(data)}\0".encode())
                h.update(data)
    return h.hexdigest()
