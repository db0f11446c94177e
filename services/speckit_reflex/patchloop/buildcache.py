"""The persistent build cache: warm cargo builds across runs on one workspace.

Layout under the cache root (``$SPECKIT_HOME/cache/targets``)::

    <key>/meta.json          what the key stands for (workspace, toolchain, profile)
    <key>/slot-<n>/lock      flock(2) held by the run using the slot
    <key>/slot-<n>/ws/       the scratch copy, synced from the workspace each run
    <key>/slot-<n>/target/   CARGO_TARGET_DIR of that copy
    <key>/slot-<n>/manifest.json   what the last sync copied (see workspace.sync_tree)
    <key>/slot-<n>/size      bytes of the slot when it was last released

`key` is a sha256 of the workspace's canonical path, the toolchain (`rustc
-vV`) and the cargo build profile. A slot is a scratch copy *and* its target
dir, used by one run at a time: cargo decides freshness from file mtimes and
paths relative to the workspace root, so two copies of one workspace with
different contents sharing one target dir give wrong answers (a broken copy
reported clean because the other copy's fixed build is "fresh"). Cargo's own
build-directory lock serialises builds but does not prevent that, so the slot
lock does: a second concurrent run on the same workspace takes the next slot
(up to MAX_SLOTS, then an uncached scratch), and the copy's path stays the same
for every run of that slot, so cargo's fingerprints keep matching.

Bounded: when the recorded sizes add up to more than `max_bytes`, the least
recently released slots that no run holds are removed.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
import subprocess
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

MAX_SLOTS = 4
_TRASH_PREFIX = ".trash-"


def build_profile(command: Sequence[str]) -> str:
    """The cargo profile `command` builds with: dev, release or `--profile X`."""
    args = list(command)
    for i, a in enumerate(args):
        if a == "--release":
            return "release"
        if a == "--profile" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--profile="):
            return a.split("=", 1)[1]
    return "dev"


def cache_key(workspace: Path, toolchain: str, profile: str) -> str:
    raw = "\0".join((str(workspace), toolchain, profile)).encode("utf-8", "surrogateescape")
    return hashlib.sha256(raw).hexdigest()[:32]


def tree_size(path: Path) -> int:
    """Bytes of the files under `path` (links not followed)."""
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def _workspace_gone(entry: Path) -> bool:
    try:
        workspace = json.loads((entry / "meta.json").read_text())["workspace"]
    except (OSError, ValueError, KeyError, TypeError):
        return False  # unknown: keep it, LRU decides
    return not Path(workspace).is_dir()


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on `path`, or None when another holds it.

    flock locks belong to the open file description, so two runs in one
    process exclude each other just as two processes do.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    try:
        # Removal renames a slot away while holding its lock: a lock taken on
        # the file of a slot that is gone meanwhile is no lock on this slot.
        if os.fstat(fd).st_ino != os.stat(path).st_ino:
            raise FileNotFoundError(path)
    except FileNotFoundError:
        os.close(fd)
        return None
    return fd


@dataclass
class Lease:
    """One slot held by one run until `release`."""

    slot: Path
    warm: bool
    _fd: int | None

    @property
    def ws(self) -> Path:
        return self.slot / "ws"

    @property
    def target(self) -> Path:
        return self.slot / "target"

    @property
    def manifest(self) -> Path:
        return self.slot / "manifest.json"

    def release(self) -> None:
        """Let the next run have the slot (cheap: safe on the event loop)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.utime(self.slot / "lock")  # last use, for LRU eviction
        except OSError:
            pass
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@dataclass(frozen=True)
class CacheInfo:
    dir: str
    enabled: bool
    size_bytes: int
    max_bytes: int
    workspaces: int
    slots: int


@dataclass(frozen=True)
class ClearResult:
    dir: str
    removed: int
    freed_bytes: int
    busy: int


class BuildCache:
    """Slots of persistent scratch copies with their target dirs, LRU-bounded.

    Every method does file I/O: call them off the event loop.
    """

    def __init__(self, root: Path, max_bytes: int, max_slots: int = MAX_SLOTS):
        self.root = root.expanduser().resolve()
        self.max_bytes = max_bytes
        self.max_slots = max_slots

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def _make_private(self) -> None:
        """The cache root, reachable by the service's user only. A build runs
        as the service's user (root in its namespaces when the service is
        root) and may leave a setuid program in its target dir: nobody else
        may get to it, whatever SPECKIT_HOME's own mode."""
        self.root.mkdir(parents=True, exist_ok=True)
        if stat.S_IMODE(self.root.stat().st_mode) & 0o077:
            self.root.chmod(0o700)

    def acquire(self, workspace: Path, toolchain: str, profile: str) -> Lease | None:
        """A free slot for `workspace` (created when needed); None when all are busy."""
        key = cache_key(workspace, toolchain, profile)
        entry = self.root / key
        self._make_private()
        for _ in range(3):  # a concurrent clear may remove the entry under us
            try:
                entry.mkdir(parents=True, exist_ok=True)
                meta = entry / "meta.json"
                if not meta.exists():
                    meta.write_text(
                        json.dumps(
                            {
                                "workspace": str(workspace),
                                "toolchain": toolchain,
                                "profile": profile,
                            },
                            indent=1,
                        )
                    )
                for n in range(self.max_slots):
                    slot = entry / f"slot-{n}"
                    slot.mkdir(exist_ok=True)
                    fd = _try_lock(slot / "lock")
                    if fd is None:
                        continue
                    target = slot / "target"
                    if target.is_symlink():  # only ever a directory made here
                        target.unlink()
                    warm = target.is_dir() and any(target.iterdir())
                    target.mkdir(exist_ok=True)
                    return Lease(slot, warm, fd)
                return None
            except FileNotFoundError:
                continue
        return None

    def account(self, lease: Lease) -> None:
        """After a run: record the slot's size, then keep the cache in bounds."""
        try:
            (lease.slot / "size").write_text(str(tree_size(lease.slot)))
        except OSError:
            pass
        self.evict()

    def _slots(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.glob("*/slot-*") if p.is_dir())

    def evict(self) -> int:
        """Remove free slots of workspaces that are gone, then least recently
        used free slots while over the bound; returns how many went."""
        slots = []
        removed = 0
        for slot in self._slots():
            if _workspace_gone(slot.parent):
                # A throwaway copy (a bakeoff trial's): its path never comes again.
                removed += self._remove(slot) is not None
                continue
            try:
                used = (slot / "lock").stat().st_mtime
            except OSError:
                continue  # being created
            try:
                size = int((slot / "size").read_text())
            except (OSError, ValueError):
                size = tree_size(slot)  # in use, or its run's process died
            slots.append((used, size, slot))
        total = sum(size for _, size, _ in slots)
        for _, size, slot in sorted(slots):
            if total <= self.max_bytes:
                break
            if self._remove(slot) is not None:
                total -= size
                removed += 1
        return removed

    def _remove(self, slot: Path) -> int | None:
        """Delete a slot no run holds; its size, or None when it is busy."""
        try:
            fd = _try_lock(slot / "lock")
        except FileNotFoundError:
            return None
        if fd is None:
            return None
        trash = self.root / f"{_TRASH_PREFIX}{uuid.uuid4().hex}"
        try:
            size = tree_size(slot)
            # Renamed while locked, so a run that opens the old lock path
            # afterwards creates a new slot instead of sharing this one.
            os.rename(slot, trash)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        shutil.rmtree(trash, ignore_errors=True)
        if not any(p.name.startswith("slot-") for p in slot.parent.iterdir()):
            # rmdir, not rmtree: a run creating a slot here meanwhile keeps it.
            (slot.parent / "meta.json").unlink(missing_ok=True)
            try:
                slot.parent.rmdir()
            except OSError:
                pass
        return size

    def info(self) -> CacheInfo:
        slots = self._slots()
        return CacheInfo(
            dir=str(self.root) if self.enabled else "",
            enabled=self.enabled,
            size_bytes=sum(tree_size(s) for s in slots),
            max_bytes=self.max_bytes,
            workspaces=len({s.parent for s in slots}),
            slots=len(slots),
        )

    def clear(self) -> ClearResult:
        """Remove every slot no run holds."""
        removed = busy = freed = 0
        for slot in self._slots():
            size = self._remove(slot)
            if size is None:
                busy += 1
            else:
                removed += 1
                freed += size
        for trash in self.root.glob(f"{_TRASH_PREFIX}*") if self.root.is_dir() else ():
            shutil.rmtree(trash, ignore_errors=True)
        return ClearResult(str(self.root), removed, freed, busy)


def toolchain_id(environ: dict[str, str], timeout_s: float = 30.0) -> str:
    """`rustc -vV` under the build environment ("" when rustc cannot run)."""
    try:
        out = subprocess.run(
            ["rustc", "-vV"], env=environ, capture_output=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.decode("utf-8", "replace").strip() if out.returncode == 0 else ""
