"""Shared fixtures: real databases, in-process services on port 0.

PostgreSQL: tests create and drop their own database on 127.0.0.1:5432
(override with SPECKIT_TEST_PG_DSN, a libpq URL of a server where we may
CREATE DATABASE). When it is unreachable, Postgres tests are skipped — except
under CI=true, where that is a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from speckit_reflex.policy import LoadedPolicy, load_policy
from speckit_reflex.runtime.bootstrap import ServiceContext, start_services
from speckit_reflex.runtime.server import RunningServer
from speckit_reflex.runtime.settings import RuntimeSettings
from speckit_reflex.runtime.tracing import Tracing
from tests.ports import (
    DeadEndpoint,
    HeldPort,
    StartFailed,
    listening_ports,
    start_on_free_port,
)

PG_ADMIN_DSN = os.environ.get(
    "SPECKIT_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
IN_CI = os.environ.get("CI", "").lower() == "true"


def _pg_admin_connect():  # type: ignore[no-untyped-def]
    import psycopg

    return psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=3)


def postgres_available() -> bool:
    try:
        with _pg_admin_connect():
            return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def _pg_ok() -> bool:
    ok = postgres_available()
    if not ok and IN_CI:
        pytest.fail(
            f"PostgreSQL unreachable at {PG_ADMIN_DSN} and CI=true: Postgres tests must run in CI"
        )
    return ok


@pytest.fixture
def postgres_url(_pg_ok: bool) -> Iterator[str]:
    """A fresh, empty PostgreSQL database (dropped afterwards), as a SQLAlchemy URL."""
    if not _pg_ok:
        pytest.skip(f"PostgreSQL unreachable at {PG_ADMIN_DSN}")
    name = f"speckit_test_{uuid.uuid4().hex[:12]}"
    with _pg_admin_connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        with _pg_admin_connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'speckit.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test using it runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'speckit.db'}"
    else:
        yield request.getfixturevalue("postgres_url")


def make_settings(tmp_path: Path, database_url: str = "", **overrides: object) -> RuntimeSettings:
    """Settings for in-process services: every port chosen by the OS."""
    values: dict[str, object] = {
        "router_addr": "127.0.0.1:0",
        "inference_addr": "127.0.0.1:0",
        "patchloop_addr": "127.0.0.1:0",
        "capsule_addr": "127.0.0.1:0",
        "database_url": database_url or f"sqlite:///{tmp_path / 'speckit.db'}",
        "home": tmp_path / ".speckit",
        "grace_s": 2.0,
        # PatchLoop opens workspaces only under its roots; tests build in tmp_path.
        "workspace_roots": str(tmp_path),
    }
    values.update(overrides)
    return RuntimeSettings(**values)  # type: ignore[arg-type]


class Services:
    """Running in-process services; `.addr(name)` and `.ctx.channel(name)`."""

    def __init__(self, ctx: ServiceContext, servers: list[RunningServer]):
        self.ctx = ctx
        self.servers = {s.service.name: s for s in servers}

    def addr(self, name: str) -> str:
        return self.servers[name].address

    async def stop(self) -> None:
        for s in reversed(list(self.servers.values())):
            await s.stop(0.5)
        await self.ctx.close()


async def start_test_services(
    names: list[str],
    settings: RuntimeSettings,
    policy: LoadedPolicy | None = None,
    tracing: Tracing | None = None,
) -> Services:
    ctx, servers = await start_services(
        names, settings, policy or load_policy(None), tracing=tracing
    )
    return Services(ctx, servers)


@pytest.fixture
async def services_factory(tmp_path: Path) -> AsyncIterator:
    """Call with (names, database_url=..., policy=..., tracing=..., **settings) to start services."""
    started: list[Services] = []

    async def factory(
        names: list[str],
        database_url: str = "",
        policy: LoadedPolicy | None = None,
        tracing: Tracing | None = None,
        **overrides,
    ):
        s = await start_test_services(
            names, make_settings(tmp_path, database_url, **overrides), policy, tracing
        )
        started.append(s)
        return s

    yield factory
    for s in started:
        await s.stop()


@pytest.fixture
def dead_endpoint() -> Iterator[Callable[[], DeadEndpoint]]:
    """Addresses nothing answers on, held (so no server can take them) until the test ends."""
    held: list[DeadEndpoint] = []

    def make() -> DeadEndpoint:
        held.append(DeadEndpoint())
        return held[-1]

    yield make
    for endpoint in held:
        endpoint.close()


@pytest.fixture
def held_port() -> Iterator[Callable[[], HeldPort]]:
    """Ports owned until the test ends: for a server the test stops midway, whose
    address must then stay dead (tests/ports.py)."""
    held: list[HeldPort] = []

    def make() -> HeldPort:
        held.append(HeldPort())
        return held[-1]

    yield make
    for port in held:
        port.close()


class LlamaServer:
    """The embedded llama.cpp server (`speckit llm serve`) in a subprocess."""

    def __init__(self, port: int):
        self.port = port
        self.proc = None
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.model = "smollm2-135m-instruct"

    @classmethod
    def on_free_port(cls, timeout_s: float = 60.0) -> LlamaServer:
        """Started on a picked port, retried on a new one if the child dies (e.g. port taken)."""
        return start_on_free_port(lambda port: cls(port).start(timeout_s))

    def start(self, timeout_s: float = 60.0) -> LlamaServer:
        import subprocess
        import sys
        import time

        import httpx

        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "speckit_reflex.cli.main",
                "llm",
                "serve",
                "--port",
                str(self.port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StartFailed(
                    f"llm serve on port {self.port} exited with {self.proc.returncode}"
                )
            try:
                # Ours answers: the port is this child's, not a process that took it.
                if httpx.get(
                    f"http://127.0.0.1:{self.port}/health", timeout=1
                ).status_code == 200 and self.port in listening_ports(self.proc.pid):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("embedded llama.cpp server did not become healthy")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except Exception:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture(scope="session")
def llama_server() -> Iterator[LlamaServer]:
    """The real embedded model server, shared by the whole test session."""
    server = LlamaServer.on_free_port()
    try:
        yield server
    finally:
        server.stop()
