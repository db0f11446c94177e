"""The sandboxed build step (GR-010).

A build runs untrusted code (build.rs, proc macros, `.cargo/config.toml`), so
each one gets:
- its own process group (and, where the OS allows, its own PID namespace) and
  a wall-clock limit; on expiry the whole group is killed, children included;
- a scrubbed environment: an allow-list of variables, and never one whose name
  looks like a credential, so a build script cannot read API keys;
- a private CARGO_TARGET_DIR in the scratch area and offline cargo;
- no network, through a network namespace (`unshare`), when this host allows
  it. Whether it does is probed once per runner; when it does not, the runner
  says so in `isolation_note` and the loop records that note in the run.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

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
# Even an allowed name is dropped when it looks like a secret.
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH", re.IGNORECASE)

# Network isolation prefixes, strongest first. The PID namespace makes the
# kernel kill every process of the build when its init dies, even one that
# left our process group with setsid().
_ISOLATION_CANDIDATES: tuple[tuple[str, ...], ...] = (
    ("unshare", "--net", "--pid", "--fork", "--kill-child"),
    ("unshare", "--net"),
    ("unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child"),
    ("unshare", "--user", "--map-root-user", "--net"),
)


def scrub_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The allow-listed variables of `environ` minus anything credential-like."""
    return {k: v for k, v in environ.items() if k in ENV_ALLOW and not _SECRET_NAME.search(k)}


@dataclass(frozen=True)
class BuildResult:
    command: tuple[str, ...]
    returncode: int | None
    stdout: str
    stderr: str
    duration_ms: float
    timed_out: bool


class NetworkIsolation:
    """Finds, once, how builds can be cut off from the network on this host."""

    def __init__(self, candidates: Sequence[Sequence[str]] = _ISOLATION_CANDIDATES, enabled: bool = True):
        self._candidates = [tuple(c) for c in candidates]
        self._enabled = enabled
        self._prefix: tuple[str, ...] | None = None
        self._note = ""
        self._probed = False

    def probe(self) -> tuple[str, ...]:
        """The command prefix that isolates a build (empty when none works)."""
        if self._probed:
            return self._prefix or ()
        self._probed = True
        if not self._enabled:
            self._note = "network isolation disabled by configuration: builds can reach the network"
            return ()
        for prefix in self._candidates:
            try:
                ok = subprocess.run([*prefix, "true"], capture_output=True, timeout=5).returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                ok = False
            if ok:
                self._prefix = prefix
                log.info("build isolation", extra={"fields": {"prefix": " ".join(prefix)}})
                return prefix
        self._note = (
            "no network namespace available on this host (unshare failed): "
            "builds run offline but are not cut off from the network"
        )
        log.warning(self._note)
        return ()

    @property
    def note(self) -> str:
        """Why builds are not network-isolated ("" when they are)."""
        self.probe()
        return self._note


class BuildRunner:
    """Runs one build command in a workspace under the sandbox rules."""

    def __init__(self, isolation: NetworkIsolation, environ: Mapping[str, str] | None = None):
        self._isolation = isolation
        self._environ = dict(os.environ if environ is None else environ)
        # A thread per build in flight (it starts the process and waits for it).
        self._threads = ThreadPoolExecutor(max_workers=256, thread_name_prefix="speckit-build")

    @property
    def isolation_note(self) -> str:
        return self._isolation.note

    def layers(self) -> list[patchloop_pb2.SandboxLayer]:
        net = not self._isolation.note
        return [
            patchloop_pb2.SandboxLayer(name="network", active=net, detail=self._isolation.note or "network namespace"),
            patchloop_pb2.SandboxLayer(name="environment", active=True, detail="allow-listed variables, no credentials"),
            patchloop_pb2.SandboxLayer(name="time_limit", active=True, detail="process group killed at the limit"),
        ]

    def environment(self, target_dir: Path) -> dict[str, str]:
        env = scrub_environment(self._environ)
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env["CARGO_TARGET_DIR"] = str(target_dir)
        env["CARGO_NET_OFFLINE"] = "true"
        env["CARGO_TERM_COLOR"] = "never"
        return env

    async def run(self, command: Sequence[str], cwd: Path, target_dir: Path, timeout_s: float) -> BuildResult:
        """Run `command` in `cwd`; kill its whole process group after `timeout_s`.

        The process is started and waited for on a thread of its own: starting
        a process blocks the caller until the child has exec'd, which under
        load (64 builds starting at once on two cores) took the event loop
        away from every other stream for seconds.
        """
        build = _Process([*self._isolation.probe(), *command], cwd, self.environment(target_dir))
        start = time.perf_counter()
        try:
            out, err, timed_out = await asyncio.get_running_loop().run_in_executor(self._threads, build.run, timeout_s)
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
        proc = subprocess.Popen(self._argv, cwd=str(self._cwd), env=self._env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
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
