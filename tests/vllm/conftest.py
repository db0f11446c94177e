"""The real vLLM runtime (CPU build, scripts/vllm_env.sh) for the tests here.

The environment is built once per machine (a few minutes the first time) in
the per-machine cache; one vLLM server is shared by the whole session (≈40 s
to start on an idle 2-core box). SPECKIT_SKIP_VLLM=1 skips every test that
needs it; without that flag a build or start-up failure fails the tests with
the reason, never a silent skip.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from speckit_reflex.policy import LoadedPolicy, Policy

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "vllm_env.sh"
SKIP_FLAG = "SPECKIT_SKIP_VLLM"
START_TIMEOUT_S = float(os.environ.get("SPECKIT_VLLM_START_TIMEOUT_S", "600"))


def skip_requested() -> bool:
    return os.environ.get(SKIP_FLAG, "") == "1"


def make_policy(**sections: Any) -> LoadedPolicy:
    policy = Policy.model_validate(sections)
    return LoadedPolicy.of(policy, "<test>")


def local_policy(
    backends: list[tuple[str, str, str]], model: str, *, timeout_ms: int = 60000, retries: int = 1
) -> LoadedPolicy:
    """Reflex backends (name, kind, endpoint) in failover order, all serving `model`."""
    return make_policy(
        routing={
            "reflex": {
                "enabled": True,
                "model": model,
                "timeout_ms": timeout_ms,
                "backends": [
                    {"name": n, "kind": k, "endpoint": e, "models": [model]} for n, k, e in backends
                ],
            },
            "health": {
                "probe_interval_s": 60,
                "stale_after_s": 600,
                "cooldown_s": 30,
                "probe_timeout_ms": 30000,
            },
        },
        inference={"max_validation_retries": retries},
    )


@pytest.fixture(scope="session")
def vllm_env() -> dict[str, str]:
    """The built vLLM environment's paths (builds it when missing)."""
    if skip_requested():
        pytest.skip(f"{SKIP_FLAG}=1: the real-vLLM tests are skipped on request")
    build = subprocess.run(["bash", str(SCRIPT), "build"], capture_output=True, text=True)
    if build.returncode != 0:
        pytest.fail(f"scripts/vllm_env.sh build failed:\n{build.stderr[-3000:]}", pytrace=False)
    where = subprocess.run(
        ["bash", str(SCRIPT), "where"], capture_output=True, text=True, check=True
    )
    return dict(line.split("=", 1) for line in where.stdout.splitlines())


def listening_port(pid: int) -> int | None:
    """The TCP port `pid` listens on (vLLM is started on port 0 and binds
    its own socket, so the OS-chosen port is read from /proc)."""
    try:
        inodes = {
            os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1]
            for fd in os.listdir(f"/proc/{pid}/fd")
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:[")
        }
        rows = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    for row in rows:
        cols = row.split()
        if cols[3] == "0A" and cols[9] in inodes:  # 0A = LISTEN
            return int(cols[1].split(":")[1], 16)
    return None


class VLLMServer:
    """vLLM's OpenAI-compatible server in its own process group."""

    def __init__(self, env: dict[str, str], log_path: Path):
        self.model = env["alias"]
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.root + "/v1"

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            # Its own session: stop() ends vLLM's engine processes with it.
            self.proc = subprocess.Popen(
                ["bash", str(SCRIPT), "serve", "0"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"vLLM exited with {self.proc.returncode} while starting:\n{self.log_tail()}"
                )
            self.port = self.port or (listening_port(self.proc.pid) or 0)
            if self.port:
                try:
                    if httpx.get(self.root + "/health", timeout=2).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"vLLM not healthy after {START_TIMEOUT_S:.0f}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture(scope="session")
def vllm_server(
    vllm_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VLLMServer]:
    """One real vLLM server for the whole session (SPECKIT_VLLM_PORT: use the
    one already running on that port, started by `scripts/vllm_env.sh serve`)."""
    server = VLLMServer(vllm_env, tmp_path_factory.mktemp("vllm") / "vllm.log")
    if os.environ.get("SPECKIT_VLLM_PORT"):
        server.port = int(os.environ["SPECKIT_VLLM_PORT"])
        yield server
        return
    try:
        server.start()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


class Oracle:
    """tests/vllm/vllm_oracle.py running in the vLLM environment."""

    def __init__(self) -> None:
        # stderr to a file: vLLM's log lines must never fill a pipe nobody reads.
        self.err = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(
            ["bash", str(SCRIPT), "python", str(Path(__file__).with_name("vllm_oracle.py"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.err,
            text=True,
        )
        first = self.proc.stdout.readline() if self.proc.stdout else ""
        if json.loads(first or "{}").get("ready") is not True:
            self.proc.wait(30)
            self.err.seek(0)
            raise RuntimeError(f"vLLM's protocol models did not import:\n{self.err.read()[-3000:]}")

    def ask(self, **msg: Any) -> dict[str, Any]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        assert "fault" not in reply, reply["fault"]
        return reply

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(30)
        self.err.close()


@pytest.fixture(scope="session")
def vllm_oracle(vllm_env: dict[str, str]) -> Iterator[Oracle]:
    try:
        oracle = Oracle()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield oracle
    finally:
        oracle.close()


async def events_when(
    capsule: Any, want: int, timeout_s: float = 15.0, **filters: Any
) -> list[Any]:
    """Capsule's events matching `filters` once at least `want` are stored
    (events reach Capsule through the services' batching sink)."""
    import asyncio

    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while True:
        events = await capsule.all_events(**filters)
        if len(events) >= want or loop.time() > end:
            return events
        await asyncio.sleep(0.05)
