"""The scratch copy a run works on, and the checked write-back to the user's tree.

The loop never edits the user's workspace while it runs: it copies it (minus
build output and VCS data) into a private scratch directory, patches and builds
there, and writes back only the changed files, atomically, when the run fixed
the build and applying was asked for. Symlinks are copied as links, never
followed, so a link that points outside the workspace stays recognisable as an
escape when a patch names a path through it.
"""

from __future__ import annotations

import difflib
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath

from speckit_reflex.errors import InvalidArgument
from speckit_reflex.patchloop.patch import PatchRejected

# Not copied: build output (large, and the scratch has its own target dir) and VCS data.
_SKIP = shutil.ignore_patterns("target", ".git", ".hg", ".svn")
MAX_FILE_BYTES = 1_000_000


def checked_relative(root: Path, name: str) -> tuple[str, Path]:
    """`name` as a normalised relative path inside `root`, and its real location.

    Raises PatchRejected("path_escape") for absolute paths, `..`, NUL bytes
    and paths whose real location (after symlinks) is outside `root`.
    """
    if not name or "\x00" in name or "\\" in name:
        raise PatchRejected("path_escape", f"{name!r} is not a plain relative path")
    pure = PurePosixPath(name)
    if pure.is_absolute() or name.startswith("~") or (len(name) > 1 and name[1] == ":"):
        raise PatchRejected("path_escape", f"{name!r} is absolute")
    if ".." in pure.parts:
        raise PatchRejected("path_escape", f"{name!r} climbs out with '..'")
    real_root = root.resolve()
    real = (real_root / pure).resolve()
    if real != real_root and real_root not in real.parents:
        raise PatchRejected("path_escape", f"{name!r} resolves outside the workspace (through a symlink)")
    rel = real.relative_to(real_root).as_posix()
    if rel in ("", "."):
        raise PatchRejected("path_escape", f"{name!r} names the workspace itself")
    return rel, real


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temp file and rename (keeps the mode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if path.exists():
            shutil.copymode(path, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Scratch:
    """A private copy of one workspace with a baseline for diffs and reverts."""

    def __init__(self, workspace: Path, base_dir: Path | None = None):
        self.workspace = workspace
        self.dir = Path(tempfile.mkdtemp(prefix="speckit-patchloop-", dir=base_dir))
        self.root = self.dir / "ws"
        self.target_dir = self.dir / "target"
        shutil.copytree(workspace, self.root, symlinks=True, ignore=_SKIP)
        self.target_dir.mkdir()
        # Content of each touched file before the run changed it (None = absent).
        self._baseline: dict[str, bytes | None] = {}
        # Files as last read or written: only this run writes the scratch
        # copy's sources, so prompts and plans need not reread the disk.
        self._contents: dict[str, bytes | None] = {}

    @classmethod
    def open(cls, workspace: str, base_dir: Path | None = None) -> Scratch:
        """Copy `workspace` (must be a directory with a Cargo.toml) to scratch."""
        path = Path(workspace).expanduser().resolve()
        if not workspace or not path.is_dir():
            raise InvalidArgument(f"workspace {workspace!r} is not a directory")
        if not (path / "Cargo.toml").is_file():
            raise InvalidArgument(f"workspace {workspace!r} has no Cargo.toml")
        return cls(path, base_dir)

    def resolve(self, name: str) -> str:
        return checked_relative(self.root, name)[0]

    def read_text(self, rel: str) -> str | None:
        """A file's text, or None when it does not exist."""
        data = self._read_bytes(rel)
        if data is None:
            return None
        if len(data) > MAX_FILE_BYTES:
            raise PatchRejected("file_too_large", f"{rel} is larger than {MAX_FILE_BYTES} bytes")
        return data.decode("utf-8", errors="replace")

    def _read_bytes(self, rel: str) -> bytes | None:
        if rel not in self._contents:
            path = self.root / rel
            self._contents[rel] = path.read_bytes() if path.is_file() else None
        return self._contents[rel]

    def write(self, contents: dict[str, str]) -> dict[str, bytes | None]:
        """Write planned contents; returns what they replaced (for a revert)."""
        previous = {rel: self._read_bytes(rel) for rel in contents}
        for rel, prev in previous.items():
            self._baseline.setdefault(rel, prev)
        # Every path is checked before the first byte is written, so a patch
        # is applied whole or not at all. Plain writes suffice here: nothing
        # reads the private scratch copy while a patch is being applied, and a
        # temp-file-and-rename per file doubles the cost of an attempt.
        targets = [(checked_relative(self.root, rel)[1], text) for rel, text in contents.items()]
        for (rel, text), (real, _) in zip(contents.items(), targets):
            data = text.encode("utf-8")
            real.parent.mkdir(parents=True, exist_ok=True)
            real.write_bytes(data)
            self._contents[rel] = data
        return previous

    def restore(self, previous: dict[str, bytes | None]) -> None:
        """Undo a write: put back the given contents (None = remove the file)."""
        for rel, data in previous.items():
            path = self.root / rel
            if data is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(data)
            self._contents[rel] = data

    def changed(self) -> dict[str, tuple[bytes | None, bytes | None]]:
        """Files whose content differs from the workspace's: rel -> (before, after)."""
        out = {}
        for rel, before in sorted(self._baseline.items()):
            after = self._read_bytes(rel)
            if after != before:
                out[rel] = (before, after)
        return out

    def diff(self) -> str:
        """Unified diff of every change against the workspace as copied."""
        chunks: list[str] = []
        for rel, (before, after) in self.changed().items():
            a = (before or b"").decode("utf-8", "replace").splitlines(keepends=True)
            b = (after or b"").decode("utf-8", "replace").splitlines(keepends=True)
            chunks.extend(
                difflib.unified_diff(
                    a, b, fromfile=f"a/{rel}" if before is not None else "/dev/null", tofile=f"b/{rel}"
                )
            )
        return "".join(chunks)

    def write_back(self) -> list[str]:
        """Write changed files into the user's workspace, each atomically."""
        written = []
        for rel, (_, after) in self.changed().items():
            _, real = checked_relative(self.workspace, rel)
            if after is None:
                real.unlink(missing_ok=True)
            else:
                atomic_write(real, after)
            written.append(rel)
        return written

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
