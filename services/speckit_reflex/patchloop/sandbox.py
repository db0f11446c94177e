"""The sandboxed build step (GR-010), in layers, the best this host gives.

A build runs untrusted code (build.rs, proc macros, `.cargo/config.toml`).
Each build runs under `unshare` (util-linux) and `sandbox_init.py`, which
together give it, layer by layer:

- network: a network namespace with no interface up — nothing to connect to;
- pid: its own PID namespace with its own /proc, so `/proc/*/environ` and
  `/proc/*/cmdline` show the build's processes only, never the service's;
- filesystem: a mount namespace whose root is a tmpfs holding read-only binds
  of the toolchain and system libraries, read-write binds of exactly the
  `writable` directories (the scratch copy and its target dir), a private
  /tmp and a minimal /dev. Nothing else of the host is visible;
- capabilities: every capability dropped and no_new_privs, so the build
  (root inside its namespaces) cannot remount, chroot or regain privileges;
- environment: an allow-list of variables, minus any that looks like a
  credential;
- time_limit: a wall clock; on expiry the process group is killed, and with
  the PID namespace every process of the build dies with its first one.

The layers available are found once, at service start (`Sandbox.probe`, a
blocking call: run it in a thread), by trying configurations strongest first;
a configuration counts only if its setup ran to the end (sandbox_init exits
126 on any failed step). As root the namespaces are created directly; a
non-root service uses a user namespace (`--user --map-root-user`) as well.
Layers a host cannot give are reported as missing — in the log at start, in
`GetBuildSettings` (`speckit reflex status`) and in a note of every run —
never claimed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from speckit_reflex.runtime.redact import is_secret_name
from speckit_reflex.v1 import patchloop_pb2

log = logging.getLogger("speckit.patchloop.sandbox")

# Variables a toolchain needs; everything else is dropped.
ENV_ALLOW = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TERM",
    "TZ",
    "TMPDIR",
    "CARGO_HOME",
    "RUSTUP_HOME",
    "RUSTUP_TOOLCHAIN",
    "RUSTC_WRAPPER",
)

LAYERS = ("network", "pid", "filesystem", "capabilities", "environment", "time_limit")
INIT = Path(__file__).with_name("sandbox_init.py")
# Read-only inside the sandbox when they exist: system binaries and libraries,
# what the linker and the dynamic loader read in /etc. Never all of /etc (it
# holds /etc/shadow and service configuration).
SYSTEM_PATHS = (
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc/alternatives",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/localtime",
)
# Files of CARGO_HOME a build must never read (registry tokens).
CARGO_SECRETS = ("credentials", "credentials.toml")


@dataclass(frozen=True)
class Candidate:
    """One way to start a build: an unshare prefix and what sandbox_init sets up."""

    unshare: tuple[str, ...]
    fs: bool = False
    proc: bool = False
    caps: bool = False

    @property
    def network(self) -> bool:
        return "--net" in self.unshare

    @property
    def pid(self) -> bool:
        return "--pid" in self.unshare and self.proc

    @property
    def uses_init(self) -> bool:
        return self.fs or self.proc or self.caps


_NS = ("--net", "--pid", "--fork", "--kill-child", "--mount", "--propagation", "private")


def default_candidates() -> list[Candidate]:
    """Strongest first; the user-namespace twins serve a non-root service."""
    plain: list[Candidate] = [
        Candidate(("unshare", *_NS), fs=True, proc=True, caps=True),
        Candidate(("unshare", *_NS), proc=True, caps=True),
        Candidate(("unshare", "--net", "--pid", "--fork", "--kill-child")),
        Candidate(("unshare", "--net")),
    ]
    user = [
        Candidate((c.unshare[0], "--user", "--map-root-user", *c.unshare[1:]), c.fs, c.proc, c.caps)
        for c in plain
    ]
    return [*plain, *user] if os.geteuid() == 0 else [*user, *plain]


def scrub_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The allow-listed variables of `environ` minus anything credential-like."""
    # Even an allowed name is dropped when it names a secret (the redactor's rule).
    return {k: v for k, v in environ.items() if k in ENV_ALLOW and not is_secret_name(k)}


@dataclass(frozen=True)
class BuildResult:
    command: tuple[str, ...]
    returncode: int | None
    stdout: str
    stderr: str
    duration_ms: float
    timed_out: bool


class Sandbox:
    """Finds, once, the layers this host gives builds, and wraps commands in them."""

    def __init__(self, candidates: Sequence[Candidate] | None = None, python: str = sys.executable):
        self._candidates = list(default_candidates() if candidates is None else candidates)
        self._python = python
        self._chosen: Candidate | None = None
        self._probed = False
        self._why: dict[str, str] = {}
        self._lock = threading.Lock()

    # -- probing (blocking) ------------------------------------------------

    @property
    def probed(self) -> bool:
        """The layers are known (`probe` has run to its end)."""
        return self._probed

    def probe(self) -> None:
        """Try each configuration, strongest first, with a real build-like start."""
        with self._lock:
            if self._probed:
                return
            failures = []
            for cand in self._candidates:
                ok, why = self._try(cand)
                if ok:
                    self._chosen = cand
                    break
                failures.append(
                    f"{' '.join(cand.unshare)}{' +' + self._init_flags(cand) if cand.uses_init else ''}: {why}"
                )
            self._why = self._missing_reasons(failures)
            self._probed = True
        for layer in self.layers():
            (log.info if layer.active else log.warning)(
                "build sandbox layer",
                extra={
                    "fields": {"layer": layer.name, "active": layer.active, "detail": layer.detail}
                },
            )

    def _try(self, cand: Candidate) -> tuple[bool, str]:
        env = self.environment(os.environ, {})
        argv = self.wrap(["true"], cwd=Path("/"), writable=[], environ=env, candidate=cand)
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, timeout=15, env=env, cwd="/"
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, str(exc)
        if proc.returncode != 0:
            return False, (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        return True, ""

    @staticmethod
    def _init_flags(cand: Candidate) -> str:
        return ",".join(
            n for n, on in (("fs", cand.fs), ("proc", cand.proc), ("caps", cand.caps)) if on
        )

    def _missing_reasons(self, failures: list[str]) -> dict[str, str]:
        why = "; ".join(failures[-2:]) or "no configuration was tried"
        return {
            "network": f"no network namespace on this host ({why})",
            "pid": f"no PID namespace with its own /proc on this host ({why})",
            "filesystem": f"no mount namespace with read-only binds on this host ({why})",
            "capabilities": f"capabilities could not be dropped ({why})",
        }

    # -- what the host gives ---------------------------------------------------

    def layers(self) -> list[patchloop_pb2.SandboxLayer]:
        """Each layer, active or missing with why (probe first: this never blocks)."""
        if not self._probed:
            return [
                patchloop_pb2.SandboxLayer(name=n, active=False, detail="not probed yet")
                for n in LAYERS
            ]
        c = self._chosen or Candidate(())
        userns = " in a user namespace" if "--user" in c.unshare else ""
        active = {
            "network": (c.network, f"network namespace without interfaces{userns}"),
            "pid": (c.pid, "own PID namespace and /proc: a build sees only its own processes"),
            "filesystem": (
                c.fs,
                "new root: toolchain and system read-only, only the scratch copy and its "
                "target dir writable, private /tmp",
            ),
            "capabilities": (c.caps, "all capabilities dropped, no_new_privs"),
            "environment": (True, "allow-listed variables, none that looks like a credential"),
            "time_limit": (
                True,
                "process group killed at the limit"
                + (
                    "; the PID namespace takes every process with it"
                    if "--pid" in c.unshare
                    else ""
                ),
            ),
        }
        return [
            patchloop_pb2.SandboxLayer(
                name=n, active=on, detail=detail if on else self._why.get(n, "")
            )
            for n, (on, detail) in active.items()
        ]

    @property
    def note(self) -> str:
        """Missing layers in one line ("" when every layer holds)."""
        missing = [f"{layer.name} ({layer.detail})" for layer in self.layers() if not layer.active]
        return (
            f"build sandbox incomplete on this host, missing: {'; '.join(missing)}"
            if missing
            else ""
        )

    # -- running ---------------------------------------------------------------

    def environment(self, environ: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
        """A build's environment: `environ` scrubbed, toolchain homes explicit, then `extra`."""
        env = scrub_environment(environ)
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        home = env.get("HOME") or os.path.expanduser("~")
        # Explicit, so cargo and rustup find them without the rest of HOME.
        env.setdefault("CARGO_HOME", os.path.join(home, ".cargo"))
        env.setdefault("RUSTUP_HOME", os.path.join(home, ".rustup"))
        if self._chosen is not None and self._chosen.fs:
            env["TMPDIR"] = "/tmp"  # the private one; a host TMPDIR is not visible
        env.update(extra)
        return env

    def wrap(
        self,
        command: Sequence[str],
        cwd: Path,
        writable: Sequence[Path],
        environ: Mapping[str, str],
        candidate: Candidate | None = None,
    ) -> list[str]:
        """`command` as the sandbox runs it, with `writable` the only writable host paths.
        `environ` is the build's environment (from `environment`): its toolchain homes are bound."""
        cand = candidate or self._chosen
        if cand is None:
            return list(command)
        if not cand.uses_init:
            return [*cand.unshare, *command]
        homes = {k: environ[k] for k in ("CARGO_HOME", "RUSTUP_HOME")}
        ro = [*SYSTEM_PATHS, *(os.path.realpath(h) for h in homes.values())]
        spec = {
            "fs": cand.fs,
            "proc": cand.proc,
            "caps": cand.caps,
            "ro": ro,
            "rw": [os.path.realpath(p) for p in writable],
            "cwd": os.path.realpath(cwd),
            "masked": [
                os.path.join(os.path.realpath(homes["CARGO_HOME"]), n) for n in CARGO_SECRETS
            ],
        }
        return [
            *cand.unshare,
            "--",
            self._python,
            "-I",
            "-S",
            str(INIT),
            json.dumps(spec),
            "--",
            *command,
        ]


class BuildRunner:
    """Runs one build command under the sandbox rules."""

    def __init__(self, sandbox: Sandbox, environ: Mapping[str, str] | None = None):
        self._sandbox = sandbox
        self._environ = dict(os.environ if environ is None else environ)
        # A thread per build in flight (it starts the process and waits for it).
        self._threads = ThreadPoolExecutor(max_workers=256, thread_name_prefix="speckit-build")

    @property
    def sandbox(self) -> Sandbox:
        return self._sandbox

    @property
    def isolation_note(self) -> str:
        return self._sandbox.note

    def layers(self) -> list[patchloop_pb2.SandboxLayer]:
        return self._sandbox.layers()

    async def probe(self) -> None:
        """Find the sandbox layers (once; subprocesses, so in a thread)."""
        if not self._sandbox.probed:  # every build asks: no thread once they are known
            await asyncio.to_thread(self._sandbox.probe)

    def environment(self, target_dir: Path) -> dict[str, str]:
        return self._sandbox.environment(
            self._environ,
            {
                "CARGO_TARGET_DIR": os.path.realpath(target_dir),
                "CARGO_NET_OFFLINE": "true",
                "CARGO_TERM_COLOR": "never",
            },
        )

    async def run(
        self,
        command: Sequence[str],
        cwd: Path,
        target_dir: Path,
        timeout_s: float,
        writable: Sequence[Path] | None = None,
    ) -> BuildResult:
        """Run `command` in `cwd`; only `writable` (default: cwd and target_dir)
        may be written; the whole process group is killed after `timeout_s`.

        The process is started and waited for on a thread of its own: starting
        a process blocks the caller until the child has exec'd, which under
        load (64 builds starting at once on two cores) took the event loop
        away from every other stream for seconds.
        """
        await self.probe()
        env = self.environment(target_dir)
        argv = self._sandbox.wrap(
            command, cwd, [cwd, target_dir] if writable is None else writable, env
        )
        build = _Process(argv, cwd, env)
        start = time.perf_counter()
        try:
            out, err, timed_out = await asyncio.get_running_loop().run_in_executor(
                self._threads, build.run, timeout_s
            )
        finally:
            # Cancelled: ending the group ends the waiting thread too. Clean
            # exit: a build can still leave background children behind.
            build.end()
        return BuildResult(
            command=tuple(command),
            returncode=None if timed_out else build.returncode,
            stdout=out.decode("utf-8", "replace"),
            stderr=err.decode("utf-8", "replace"),
            duration_ms=(time.perf_counter() - start) * 1000,
            timed_out=timed_out,
        )


class _Process:
    """One build process, started and waited for on a worker thread; `end`
    (from the event loop) kills its group, even before it has started."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]):
        self._argv, self._cwd, self._env = argv, cwd, env
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._ended = False

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.returncode

    def run(self, timeout_s: float) -> tuple[bytes, bytes, bool]:
        proc = subprocess.Popen(
            self._argv,
            cwd=str(self._cwd),
            env=self._env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        with self._lock:
            self._proc = proc
            if self._ended:  # the run was cancelled while this process started
                _kill_group(proc.pid)
        return _communicate(proc, timeout_s)

    def end(self) -> None:
        with self._lock:
            self._ended = True
            if self._proc is not None:
                _kill_group(self._proc.pid)


def _communicate(proc: subprocess.Popen[bytes], timeout_s: float) -> tuple[bytes, bytes, bool]:
    """(stdout, stderr, timed out) of `proc`, its group killed at `timeout_s`."""
    try:
        out, err = proc.communicate(timeout=timeout_s)
        return out, err, False
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        # Pipes close once every holder in the group is dead; a process
        # that escaped the group could hold them open, so bound the wait.
        try:
            out, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            out, err = b"", b""
            proc.kill()
            proc.wait()
        return out, err, True


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
