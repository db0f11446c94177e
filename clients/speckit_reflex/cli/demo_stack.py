"""The demo's local stack as child processes: the embedded model server
(`speckit llm serve`) and the four services (`speckit serve all`) on free
loopback ports, with a policy that points reflex at that model server.
Each child runs in its own session so that it is stopped in order, by us."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from speckit_reflex.clients.health import is_serving
from speckit_reflex.clients.ports import pick_port
from speckit_reflex.demo import DEMO_POLICY
from speckit_reflex.runtime.bootstrap import SERVICE_ORDER

# The model server address written in the shipped policy, replaced by the port in use.
TEMPLATE_ADDR = "127.0.0.1:3009"


# A child is told its port; between the pick and its own bind another process
# may take it. It then exits saying so (our servers: "already in use";
# llama.cpp: "Failed to bind"), and the demo starts it again on fresh ports.
LOST_PORT_MARKERS = ("already in use", "Failed to bind")
START_TRIES = 3


class StackError(RuntimeError):
    """A child process did not start or did not become ready."""


class PortLost(StackError):
    """A child exited because the port it was told was taken before it could bind it."""


def render_policy(template: str, llm_port: int) -> str:
    """The shipped demo policy with its model server on `llm_port`."""
    if TEMPLATE_ADDR not in template:
        raise StackError(f"demo policy template does not mention {TEMPLATE_ADDR}")
    return template.replace(TEMPLATE_ADDR, f"127.0.0.1:{llm_port}")


@dataclass
class Child:
    """One child process and its log file."""

    name: str
    proc: asyncio.subprocess.Process
    log: Path

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self.proc.returncode is not None:
            tail = self.tail()
            error = PortLost if any(m in tail for m in LOST_PORT_MARKERS) else StackError
            raise error(f"{self.name} exited with {self.proc.returncode}; last log lines:\n{tail}")

    async def stop(self, grace_s: float = 15.0) -> None:
        if self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), grace_s)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


@dataclass
class DemoStack:
    """Model server + services for the demo, under `workdir`."""

    workdir: Path
    llm_port: int = 0
    addrs: dict[str, str] = field(default_factory=dict)
    children: list[Child] = field(default_factory=list)

    @property
    def policy_path(self) -> Path:
        return self.workdir / "model_policy.toml"

    @property
    def database_url(self) -> str:
        return f"sqlite:///{(self.workdir / 'speckit.db').resolve()}"

    def client_env(self) -> dict[str, str]:
        """SPECKIT_<SVC>_ADDR of the running services (for clients)."""
        return {f"SPECKIT_{name.upper()}_ADDR": addr for name, addr in self.addrs.items()}

    async def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> Child:
        log = self.workdir / f"{name}.log"
        with log.open("ab") as out:  # a restarted child adds to the log of its lost tries
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "speckit_reflex.cli.main",
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=env,
                start_new_session=True,
            )
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    async def start_model_server(self, timeout_s: float = 180.0) -> str:
        """Start `speckit llm serve` and wait for /health; returns its /v1 URL.

        On a port taken before the server could bind it, starts again on a fresh one."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        for tries_left in reversed(range(START_TRIES)):
            self.llm_port = pick_port()
            try:
                return await self._start_model_server_once(timeout_s)
            except PortLost:
                if not tries_left:
                    raise
        raise AssertionError("unreachable")

    async def _start_model_server_once(self, timeout_s: float) -> str:
        child = await self._spawn(
            "llm", ["llm", "serve", "--port", str(self.llm_port)], dict(os.environ)
        )
        url = f"http://127.0.0.1:{self.llm_port}"
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=2.0) as http:
            while time.monotonic() < deadline:
                child.check_alive()
                try:
                    if (await http.get(f"{url}/health")).status_code == 200:
                        return f"{url}/v1"
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.3)
        raise StackError(
            f"the model server did not become healthy in {timeout_s:.0f} s:\n{child.tail()}"
        )

    def write_policy(self) -> Path:
        self.policy_path.write_text(
            render_policy(DEMO_POLICY.read_text(encoding="utf-8"), self.llm_port), encoding="utf-8"
        )
        return self.policy_path

    async def start_services(self, timeout_s: float = 60.0) -> dict[str, str]:
        """Start `speckit serve all` on free ports; wait until each answers SERVING.

        On a port taken before a service could bind it, starts again on fresh ones."""
        for tries_left in reversed(range(START_TRIES)):
            self.addrs = {name: f"127.0.0.1:{pick_port()}" for name in SERVICE_ORDER}
            try:
                return await self._start_services_once(timeout_s)
            except PortLost:
                if not tries_left:
                    raise
        raise AssertionError("unreachable")

    async def _start_services_once(self, timeout_s: float) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPECKIT_")}
        env.update(self.client_env())
        env.update(
            {
                "SPECKIT_POLICY": str(self.policy_path.resolve()),
                "SPECKIT_HOME": str(self.workdir.resolve()),
                # The demo's crate and its bakeoff copies live under workdir.
                "SPECKIT_WORKSPACE_ROOTS": str(self.workdir.resolve()),
                "SPECKIT_DATABASE_URL": self.database_url,
                "SPECKIT_GRACE_S": "3",
            }
        )
        child = await self._spawn("services", ["serve", "all"], env)
        deadline = time.monotonic() + timeout_s
        for name, addr in self.addrs.items():
            while not await is_serving(addr):
                child.check_alive()
                if time.monotonic() > deadline:
                    raise StackError(f"{name} did not report SERVING at {addr}:\n{child.tail()}")
                await asyncio.sleep(0.3)
        return self.addrs

    async def stop(self) -> None:
        """Stop the children, last started first."""
        for child in reversed(self.children):
            await child.stop()
        self.children.clear()


def kill_children(stack: DemoStack) -> None:
    """Last resort when the event loop is gone (a second Ctrl-C): SIGTERM every
    child still running, so none outlives the demo."""
    for child in stack.children:
        if child.proc.returncode is None:
            try:
                os.kill(child.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
