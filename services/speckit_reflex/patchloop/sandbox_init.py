"""First process of a sandboxed build: sets up its mounts and privileges, then execs the build.

Run by path with `python -I -S` as the child of
`unshare --mount --pid --fork --net ...` (sandbox.py), so it is PID 1 of a
new PID namespace and alone in a new mount namespace. Standard library only:
nothing of the service is importable here, by design.

    sandbox_init.py SPEC_JSON -- ARGV...

SPEC: {"fs": bool, "proc": bool, "caps": bool, "ro": [paths], "rw": [paths], "masked": [files], "cwd": path}

- fs: a new root on a tmpfs holding read-only binds of `ro` (the toolchain,
  system libraries), read-write binds of `rw` (the scratch copy and its target
  dir), `masked` files hidden behind /dev/null, a private /tmp, a minimal /dev and — with `proc` — a /proc of this
  PID namespace only. The old root is detached: nothing else of the host is
  reachable, for reading or writing.
- proc only (no fs): a fresh /proc mounted over the host's, so /proc lists
  this namespace's processes only.
- caps: every capability dropped for good (bounding set, ambient, securebits
  locked, no_new_privs), so the build — root inside the namespace — cannot
  remount, chroot or regain privileges by exec.

Any step that fails ends this process with status 126 and a line on stderr,
so a layer is never claimed that was not set up.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import warnings  # noqa: F401 (os.execvp imports it lazily, after the host's root, and Python's, is gone)

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MNT_DETACH = 2
PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 24, 28, 38, 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
# NOROOT, NO_SETUID_FIXUP, KEEP_CAPS (locked off), NO_CAP_AMBIENT_RAISE, each locked.
SECUREBITS = 0b11101111
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41}
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]


class SetupError(Exception):
    pass


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(err)}")


def mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None
) -> None:
    def enc(s: str | None) -> bytes | None:
        return None if s is None else s.encode()

    _check(
        libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)),
        f"mount {source} on {target}",
    )


def _kept_flags(path: str) -> int:
    """Flags of the mount holding `path` that a remount must keep (a user
    namespace may not clear flags it inherited locked)."""
    f = os.statvfs(path).f_flag
    out = 0
    for st_bit, ms_bit in (
        (1, MS_RDONLY),
        (2, MS_NOSUID),
        (4, MS_NODEV),
        (8, MS_NOEXEC),
        (1024, MS_NOATIME),
        (2048, MS_NODIRATIME),
        (4096, MS_RELATIME),
    ):
        if f & st_bit:
            out |= ms_bit
    return out


def _mountpoint(target: str, like: str) -> None:
    """An empty file or directory at `target` to bind `like` onto."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.isdir(like):
        os.makedirs(target, exist_ok=True)
    elif not os.path.lexists(target):
        with open(target, "w"):
            pass


def _bind(source: str, target: str) -> None:
    _mountpoint(target, source)
    mount(source, target, None, MS_BIND | MS_REC)


def _remount(target: str, readonly: bool) -> None:
    flags = (_kept_flags(target) & ~MS_RDONLY) | MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV
    mount(None, target, None, flags | (MS_RDONLY if readonly else 0))


def _submounts(under: str) -> list[str]:
    """Mount points at or below `under`, parents first (from our own mountinfo)."""
    points = []
    with open("/oldroot/proc/self/mountinfo") as f:  # the host's /proc, until the pivot
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == under or point.startswith(under.rstrip("/") + "/"):
                points.append(point)
    return points


def new_root(ro: list[str], rw: list[str], masked: list[str], with_proc: bool) -> None:
    """Build the sandbox's root under /newroot and pivot into it (bubblewrap's way)."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    # A tmpfs on /tmp becomes the root for a while; the host's root moves to
    # /oldroot, so every host path stays reachable (as /oldroot/...) until the
    # new root is complete.
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    for d in ("/tmp/newroot", "/tmp/oldroot"):
        os.mkdir(d)
    pivot_root("/tmp", "/tmp/oldroot")
    os.chdir("/")
    mount("tmpfs", "/newroot", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    # The private /tmp first: the scratch copy often lives under the host's
    # /tmp, and its bind must land on top of this one, not under it.
    _private_tmp()
    for path in sorted(set(ro) | set(rw), key=lambda p: p.count("/")):
        host = "/oldroot" + path
        if not os.path.lexists(host):
            continue
        target = "/newroot" + path
        if os.path.islink(host) and path in ro:
            # /bin -> usr/bin on merged-/usr systems: the same link, not a bind.
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if not os.path.lexists(target):
                os.symlink(os.readlink(host), target)
            continue
        _bind(host, target)
    for path in masked:  # secrets inside a read-only bind (cargo's registry tokens)
        if os.path.isfile("/newroot" + path):
            mount("/oldroot/dev/null", "/newroot" + path, None, MS_BIND)
    # Every mount of the new tree is read-only except the writable binds
    # (and what is below them); parents first, so a writable bind below a
    # read-only one is remounted after it.
    writable = ["/newroot" + p for p in rw]
    for point in _submounts("/newroot"):
        if point in ("/newroot", "/newroot/tmp"):
            continue
        inside_rw = any(point == w or point.startswith(w + "/") for w in writable)
        _remount(point, readonly=not inside_rw)
    _devices()
    if with_proc:
        os.makedirs("/newroot/proc", exist_ok=True)
        mount("proc", "/newroot/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.chdir("/newroot")
    pivot_root(".", ".")
    _check(libc.umount2(b".", MNT_DETACH), "detach the host's root")
    os.chdir("/")
    mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _private_tmp() -> None:
    os.makedirs("/newroot/tmp", exist_ok=True)
    mount("tmpfs", "/newroot/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")


def _devices() -> None:
    os.makedirs("/newroot/dev", exist_ok=True)
    mount("tmpfs", "/newroot/dev", "tmpfs", MS_NOSUID, "mode=0755")
    for name in DEVICES:
        if os.path.exists(f"/oldroot/dev/{name}"):
            _bind(f"/oldroot/dev/{name}", f"/newroot/dev/{name}")
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        os.symlink(target, f"/newroot/dev/{name}")
    os.mkdir("/newroot/dev/shm")
    mount("tmpfs", "/newroot/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")


def pivot_root(new: str, old: str) -> None:
    number = SYS_PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        raise SetupError(f"pivot_root: unknown syscall number on {os.uname().machine}")
    _check(libc.syscall(number, new.encode(), old.encode()), f"pivot_root {new}")


def proc_only() -> None:
    """A /proc of this PID namespace over the host's (no new root)."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def drop_capabilities(last_cap: int) -> None:
    _check(libc.prctl(PR_SET_SECUREBITS, SECUREBITS, 0, 0, 0), "lock securebits")
    for cap in range(last_cap + 1):
        _check(
            libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0),
            f"drop capability {cap} from the bounding set",
        )
    _check(
        libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear ambient capabilities"
    )
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "set no_new_privs")
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    _check(libc.capset(ctypes.byref(header), data), "clear capabilities")


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print("usage: sandbox_init.py SPEC_JSON -- ARGV...", file=sys.stderr)
        return 126
    spec, command = json.loads(argv[1]), argv[3:]
    try:
        last_cap = int(open("/proc/sys/kernel/cap_last_cap").read())
        if spec.get("fs"):
            new_root(spec["ro"], spec["rw"], spec.get("masked", []), bool(spec.get("proc")))
        elif spec.get("proc"):
            proc_only()
        if spec.get("caps"):
            drop_capabilities(last_cap)
        os.chdir(spec["cwd"])
    except (OSError, SetupError) as exc:
        print(f"speckit sandbox: {exc}", file=sys.stderr)
        return 126
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"speckit sandbox: cannot run {command[0]}: {exc}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv))
