"""The scratch copy a run works on, and the checked write-back to the user's tree.

The loop never edits the user's workspace while it runs: it copies it (minus
build output and VCS data) into a scratch directory, patches and builds there,
and writes back only the changed files, atomically, when the run fixed the
build and applying was asked for.

The copy is synced, not remade: with the persistent build cache a workspace
keeps one scratch copy per cache slot at a fixed path, and each run brings it
level with the workspace (`sync_tree`): changed files are copied anew (fresh
mtime, so cargo rebuilds what they feed), removed ones deleted, unchanged ones
left alone (so cargo's fingerprints stay fresh). Content is copied, never
hard-linked (a build script could write through a link into the user's tree);
`copy_file_range` lets filesystems that can share extents (btrfs, XFS) do so
copy-on-write. Symlinks are copied as links, never followed. A link whose
target lies inside the workspace points at the same place in the copy; one
that leads outside is made to dangle (`REFUSED_LINK`), so neither the build
(rustc prints a file it cannot parse in its errors, and errors go into the
prompt) nor a patch reaches the host file through it, and a patch naming a
path through it is still rejected as an escape.
"""

from __future__ import annotations

import difflib
import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from speckit_reflex.errors import InvalidArgument
from speckit_reflex.patchloop.buildcache import BuildCache, Lease
from speckit_reflex.patchloop.patch import PatchRejected
from speckit_reflex.v1 import patchloop_pb2

# Not copied: build output (large, and the scratch has its own target dir) and VCS data.
SKIP_NAMES = frozenset({"target", ".git", ".hg", ".svn"})
# Where a link of the copy that led out of the workspace points instead: a
# path that does not exist (and that nothing a run does creates).
REFUSED_LINK = "/nonexistent/speckit-link-outside-the-workspace"
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
        raise PatchRejected(
            "path_escape", f"{name!r} resolves outside the workspace (through a symlink)"
        )
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


@dataclass
class SyncStats:
    """What one sync did: files copied anew, deleted, left as they were."""

    copied: int = 0
    removed: int = 0
    kept: int = 0
    bytes_copied: int = 0
    # sha256 of each file's content as synced (relative path -> hex digest).
    digests: dict[str, str] = field(default_factory=dict)
    # Links that led outside the workspace, made to dangle (relative paths).
    refused_links: list[str] = field(default_factory=list)


def _sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _copy_file(src: str, dst: str, mode: int) -> int:
    """A new file at `dst` with the content of `src` (never a link to it)."""
    fd_in = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fd_out = os.open(
            dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
        )
        try:
            size = os.fstat(fd_in).st_size
            done = 0
            try:
                while done < size:
                    # Shares extents where the filesystem can (reflink), else an in-kernel copy.
                    n = os.copy_file_range(fd_in, fd_out, size - done)
                    if n == 0:
                        break
                    done += n
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                while chunk := os.read(fd_in, 1 << 20):  # continues at the current offsets
                    done += os.write(fd_out, chunk)
            os.fchmod(fd_out, stat.S_IMODE(mode))
        finally:
            os.close(fd_out)
    finally:
        os.close(fd_in)
    return done


def _remove_any(path: str) -> None:
    """Remove whatever is at `path` (a directory with its content, a file, a link)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def sync_tree(src: Path, dst: Path, manifest_path: Path | None = None) -> SyncStats:
    """Make `dst` an exact copy of `src` minus SKIP_NAMES, touching only what differs.

    The manifest remembers, per file, the source's size, mtime and mode with
    its content hash, and the copy's size, mtimes and inode as written. A copy
    whose stat no longer matches (a patch of an earlier run, a build script)
    is compared by content and rewritten when it differs; a copy that is not
    a plain file with one link is always replaced. Anything in `dst` that
    `src` does not have is deleted, so the copy holds nothing a build left.
    """
    old: dict[str, dict[str, Any]] = {}
    if manifest_path is not None:
        try:
            old = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            old = {}
    new: dict[str, dict[str, Any]] = {}
    stats = SyncStats()
    expected: set[str] = set()
    dst.mkdir(parents=True, exist_ok=True)
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_NAMES)
        rel_dir = os.path.relpath(dirpath, src)
        rel_dir = "" if rel_dir == "." else rel_dir
        out_dir = os.path.join(dst, rel_dir)
        # Every directory of the copy is a real one: a link planted in its
        # place would carry the writes below into somewhere else.
        st = os.lstat(out_dir) if os.path.lexists(out_dir) else None
        if st is None or not stat.S_ISDIR(st.st_mode):
            if st is not None:
                os.unlink(out_dir)
            os.mkdir(out_dir)
        for name in list(dirnames):
            if os.path.islink(os.path.join(dirpath, name)):
                dirnames.remove(name)  # a link to a directory: copied as a link, not walked
                filenames.append(name)
            else:
                expected.add(os.path.join(rel_dir, name))
        for name in filenames:
            rel = os.path.join(rel_dir, name)
            s_path, d_path = os.path.join(dirpath, name), os.path.join(out_dir, name)
            record = _sync_entry(s_path, d_path, old.get(rel), stats, (src, dst))
            if record is not None:
                expected.add(rel)
                new[rel] = record
                if "sha" in record:
                    stats.digests[rel] = record["sha"]
    for dirpath, dirnames, filenames in os.walk(dst, topdown=True):
        rel_dir = os.path.relpath(dirpath, dst)
        rel_dir = "" if rel_dir == "." else rel_dir
        for name in dirnames + filenames:
            rel = os.path.join(rel_dir, name)
            if rel not in expected:
                _remove_any(os.path.join(dirpath, name))
                stats.removed += 1
        dirnames[:] = [d for d in dirnames if os.path.join(rel_dir, d) in expected]
    if manifest_path is not None:
        manifest_path.write_text(json.dumps(new, separators=(",", ":")))
    return stats


def contained_link(s_path: str, d_path: str, src: Path, dst: Path) -> str | None:
    """The target the copy's link at `d_path` gets: the same place in the copy,
    relative (an absolute one would lead back into the user's tree), when the
    source link at `s_path` resolves inside `src`; None when it leads outside."""
    try:
        real = Path(s_path).resolve()
    except (OSError, RuntimeError):  # a loop
        return None
    src = src.resolve()
    if real != src and src not in real.parents:
        return None
    return os.path.relpath(dst / real.relative_to(src), os.path.dirname(d_path))


def _sync_entry(
    s_path: str,
    d_path: str,
    rec: dict[str, Any] | None,
    stats: SyncStats,
    roots: tuple[Path, Path],
) -> dict[str, Any] | None:
    """Bring one file or link of the copy level with the source; its manifest record."""
    s_st = os.lstat(s_path)
    if not (stat.S_ISREG(s_st.st_mode) or stat.S_ISLNK(s_st.st_mode)):
        return None  # sockets, FIFOs, devices: nothing a build reads, and opening a FIFO blocks
    d_st = os.lstat(d_path) if os.path.lexists(d_path) else None
    if stat.S_ISLNK(s_st.st_mode):
        contained = contained_link(s_path, d_path, *roots)
        if contained is None:
            stats.refused_links.append(os.path.relpath(s_path, roots[0]))
        target = REFUSED_LINK if contained is None else contained
        if d_st is not None and stat.S_ISLNK(d_st.st_mode) and os.readlink(d_path) == target:
            stats.kept += 1
        else:
            _remove_any(d_path)
            os.symlink(target, d_path)
            stats.copied += 1
        return {"link": target}
    src_key = [s_st.st_size, s_st.st_mtime_ns, s_st.st_mode]
    rec = rec or {}
    sha = rec["sha"] if rec.get("src") == src_key and "sha" in rec else _sha(s_path)
    if (
        d_st is not None
        and stat.S_ISREG(d_st.st_mode)
        and d_st.st_nlink == 1
        and d_st.st_mode == s_st.st_mode
    ):
        d_key = [d_st.st_size, d_st.st_mtime_ns, d_st.st_ctime_ns, d_st.st_ino]
        # ctime cannot be set back by a process, so an unchanged stat means
        # nobody wrote the copy since the last sync.
        if (rec.get("dst") == d_key and rec.get("sha") == sha) or (
            d_st.st_size == s_st.st_size and _sha(d_path) == sha
        ):
            stats.kept += 1
            return {"src": src_key, "sha": sha, "dst": d_key}
    _remove_any(d_path)
    stats.bytes_copied += _copy_file(s_path, d_path, s_st.st_mode)
    stats.copied += 1
    d_st = os.lstat(d_path)
    return {
        "src": src_key,
        "sha": sha,
        "dst": [d_st.st_size, d_st.st_mtime_ns, d_st.st_ctime_ns, d_st.st_ino],
    }


def _open_parent(root: Path, rel: str) -> tuple[int, str]:
    """An fd of the directory holding `rel` under `root`, and its file name,
    reached one component at a time without following a link. A build runs
    between a patch and its revert and may swap a folder of the copy for a
    link to a host folder: a link or file where a folder belongs is replaced
    by an empty folder, so nothing is written or deleted through it."""
    *dirs, name = PurePosixPath(rel).parts
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(root, flags)
    try:
        for part in dirs:
            try:
                sub = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    os.unlink(part, dir_fd=fd)  # a link or a file: never followed
                elif exc.errno != errno.ENOENT:
                    raise
                os.mkdir(part, 0o755, dir_fd=fd)
                sub = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = sub
    except BaseException:
        os.close(fd)
        raise
    return fd, name


def _replace(root: Path, rel: str, data: bytes | None) -> None:
    """Write `data` as a new file at `rel` under `root` (None: remove it). A
    new file, because a build may have hard-linked the old one to a file
    elsewhere and writing into it would write there too; and no link on the
    way followed (`_open_parent`)."""
    dir_fd, name = _open_parent(root, rel)
    try:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            mode = stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else 0o644
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(name, dir_fd=dir_fd)  # follows no link
            else:
                os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            mode = 0o644
        if data is None:
            return
        fd = os.open(
            name,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
            mode,
            dir_fd=dir_fd,
        )
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    finally:
        os.close(dir_fd)


class Scratch:
    """A private copy of one workspace with a baseline for diffs and reverts.

    Either a slot of the build cache (kept after the run, `lease` set) or a
    temporary directory removed at `close`.
    """

    def __init__(
        self,
        workspace: Path,
        root: Path,
        target_dir: Path,
        *,
        cache_state: patchloop_pb2.CacheState.ValueType,
        lease: Lease | None = None,
        cache: BuildCache | None = None,
        temp_dir: Path | None = None,
        sync: SyncStats | None = None,
    ):
        self.workspace = workspace
        self.root = root
        self.target_dir = target_dir
        self.cache_state = cache_state
        self.sync = sync or SyncStats()
        self._lease = lease
        self._cache = cache
        self._temp_dir = temp_dir
        # Content of each touched file before the run changed it (None = absent).
        self._baseline: dict[str, bytes | None] = {}
        # Files as last read or written: only this run writes the scratch
        # copy's sources, so prompts and plans need not reread the disk.
        self._contents: dict[str, bytes | None] = {}

    @staticmethod
    def check_workspace(workspace: str) -> Path:
        """`workspace` as a canonical path; InvalidArgument unless a directory with a Cargo.toml."""
        path = Path(workspace).expanduser().resolve()
        if not workspace or not path.is_dir():
            raise InvalidArgument(f"workspace {workspace!r} is not a directory")
        if not (path / "Cargo.toml").is_file():
            raise InvalidArgument(f"workspace {workspace!r} has no Cargo.toml")
        return path

    @classmethod
    def open(
        cls,
        workspace: Path,
        base_dir: Path | None = None,
        cache: BuildCache | None = None,
        toolchain: str = "",
        profile: str = "dev",
    ) -> Scratch:
        """Sync `workspace` into a cache slot, or copy it to a temporary scratch.

        Blocking file I/O: call it off the event loop.
        """
        lease = (
            cache.acquire(workspace, toolchain, profile)
            if cache is not None and cache.enabled
            else None
        )
        if lease is not None:
            try:
                stats = sync_tree(workspace, lease.ws, lease.manifest)
            except BaseException:
                lease.release()
                raise
            state = patchloop_pb2.CACHE_STATE_WARM if lease.warm else patchloop_pb2.CACHE_STATE_COLD
            return cls(
                workspace,
                lease.ws,
                lease.target,
                cache_state=state,
                lease=lease,
                cache=cache,
                sync=stats,
            )
        temp = Path(tempfile.mkdtemp(prefix="speckit-patchloop-", dir=base_dir))
        try:
            stats = sync_tree(workspace, temp / "ws")
            (temp / "target").mkdir()
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        return cls(
            workspace,
            temp / "ws",
            temp / "target",
            cache_state=patchloop_pb2.CACHE_STATE_OFF,
            temp_dir=temp,
            sync=stats,
        )

    def resolve(self, name: str) -> str:
        return checked_relative(self.root, name)[0]

    def unread(self, names: Iterable[str]) -> list[str]:
        """Of the files `names` (as a diagnostic or a patch names them), those
        this run has not read yet: reading them is disk I/O, the others are in
        memory. Names that do not resolve inside the copy are left out (their
        use refuses them)."""
        out: list[str] = []
        for name in names:
            try:
                rel = self.resolve(name)
            except PatchRejected:
                continue
            if rel not in self._contents and rel not in out:
                out.append(rel)
        return out

    def load(self, rels: Iterable[str]) -> None:
        """Read files into memory (blocking I/O: call it off the event loop)."""
        for rel in rels:
            self._read_bytes(rel)

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
            data = path.read_bytes() if path.is_file() else None
            synced = self.sync.digests.get(rel)
            if (
                data is not None
                and synced is not None
                and hashlib.sha256(data).hexdigest() != synced
            ):
                # A build (script) rewrote the copy since the sync: the loop
                # works on, and would write back, the user's content only.
                _, real = checked_relative(self.workspace, rel)
                user = real.read_bytes() if real.is_file() else None
                if user is not None and hashlib.sha256(user).hexdigest() == synced:
                    _replace(self.root, rel, user)
                    data = user
            self._contents[rel] = data
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
        targets = [(checked_relative(self.root, rel)[0], text) for rel, text in contents.items()]
        for (rel, text), (real_rel, _) in zip(contents.items(), targets, strict=True):
            data = text.encode("utf-8")
            _replace(self.root, real_rel, data)
            self._contents[rel] = data
        return previous

    def restore(self, previous: dict[str, bytes | None]) -> None:
        """Undo a write: put back the given contents (None = remove the file)."""
        for rel, data in previous.items():
            # Not through checked_relative: a build ran since the write, and
            # a link it planted must be replaced, not followed nor refused.
            _replace(self.root, rel, data)
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
                    a,
                    b,
                    fromfile=f"a/{rel}" if before is not None else "/dev/null",
                    tofile=f"b/{rel}",
                )
            )
        return "".join(chunks)

    def write_back(self) -> list[str]:
        """Write changed files into the user's workspace, each atomically.

        Only over files still as the run began with them: a file the user
        changed meanwhile (or one whose copy a build rewrote before the loop
        read it) is refused whole, before anything is written.
        """
        changed = self.changed()
        for rel, (before, _) in changed.items():
            _, real = checked_relative(self.workspace, rel)
            now = real.read_bytes() if real.is_file() else None
            if now != before:
                raise PatchRejected(
                    "workspace_changed", f"{rel} differs from the content the run started from"
                )
        written = []
        for rel, (_, after) in changed.items():
            _, real = checked_relative(self.workspace, rel)
            if after is None:
                real.unlink(missing_ok=True)
            else:
                atomic_write(real, after)
            written.append(rel)
        return written

    def release(self) -> None:
        """Done with the copy: its cache slot is free for the next run (cheap)."""
        if self._lease is not None:
            self._lease.release()

    def close(self) -> None:
        """Release, then remove a temporary copy or account for the slot (blocking I/O)."""
        self.release()
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
        elif self._lease is not None and self._cache is not None:
            self._cache.account(self._lease)
