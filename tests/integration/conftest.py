"""The stack the integration tests drive, through its public surface only:
the `speckit` CLI as a subprocess and the typed clients over gRPC.

Default (SPECKIT_TEST_STACK unset or "local"): the tests start it themselves,
as an operator would without containers — `speckit db upgrade`, then
`speckit serve all` on ports the OS picks, and `speckit llm serve`, with the
compose `cpu` profile's policy pointed at that model server, a bearer token,
and a temporary database (PostgreSQL when reachable, else SQLite).

SPECKIT_TEST_STACK=external: a stack someone else started (compose, or
`speckit serve` on another host). Give the four SPECKIT_*_ADDR, the
SPECKIT_AUTH_TOKEN it requires, and SPECKIT_TEST_WORKSPACE, a folder that
PatchLoop sees at the same path (the compose stack's REFLEX_WORKSPACE; a
temporary folder by default, right when PatchLoop runs on this host).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.resources.abc import Traversable
from pathlib import Path

import pytest
from grpc import aio

from speckit_reflex.bakeoff import copy_tree
from speckit_reflex.clients.channel import ChannelConfig, open_channel
from speckit_reflex.demo import DEMO_CRATE

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("router", "inference", "patchloop", "capsule")
CPU_POLICY = ROOT / "compose" / "policies" / "cpu.toml"
# The model server address in the compose cpu policy (the `llm` service).
COMPOSE_LLM_URL = "http://llm:3009/v1"
EXTERNAL = os.environ.get("SPECKIT_TEST_STACK", "local") == "external"
START_TIMEOUT_S = 120.0


@dataclass
class StackUnderTest:
    addrs: dict[str, str]
    token: str
    workspace: Path
    external: bool
    logs: list[Path] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        """The CLI's environment: this stack's addresses and token only.
        TMPDIR is the workspace, because `reflex trials` copies suite crates
        there and PatchLoop must be able to open them."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPECKIT_")}
        env.update({f"SPECKIT_{r.upper()}_ADDR": a for r, a in self.addrs.items()})
        env["SPECKIT_AUTH_TOKEN"] = self.token
        env["TMPDIR"] = str(self.workspace)
        env.update(extra)
        return env

    def speckit(
        self, *args: str, timeout_s: float = 600, **env: str
    ) -> subprocess.CompletedProcess[str]:
        """`speckit ARGS` as a subprocess against this stack."""
        return subprocess.run(
            [sys.executable, "-m", "speckit_reflex.cli.main", *args],
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=self.workspace,
        )

    def speckit_json(self, *args: str, ok: tuple[int, ...] = (0,), **kw: object) -> dict:  # type: ignore[type-arg]
        proc = self.speckit(*args, "--json", **kw)  # type: ignore[arg-type]
        assert proc.returncode in ok, (
            f"speckit {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}"
        )
        return json.loads(proc.stdout)

    def channel(self, role: str) -> aio.Channel:
        return open_channel(ChannelConfig(address=self.addrs[role], token=self.token))

    def new_crate(self, source: Traversable = DEMO_CRATE) -> Path:
        return copy_tree(source, self.workspace / f"crate-{uuid.uuid4().hex[:8]}")


def _external() -> StackUnderTest:
    missing = [
        f"SPECKIT_{r.upper()}_ADDR"
        for r in ROLES
        if not os.environ.get(f"SPECKIT_{r.upper()}_ADDR")
    ]
    if missing:
        pytest.fail(f"SPECKIT_TEST_STACK=external needs {', '.join(missing)}")
    given = os.environ.get("SPECKIT_TEST_WORKSPACE")
    workspace = Path(given) if given else Path(tempfile.mkdtemp(prefix="speckit-it-"))
    workspace.mkdir(parents=True, exist_ok=True)
    return StackUnderTest(
        addrs={r: os.environ[f"SPECKIT_{r.upper()}_ADDR"] for r in ROLES},
        token=os.environ.get("SPECKIT_AUTH_TOKEN", ""),
        workspace=workspace,
        external=True,
    )


class _Serving:
    """Reads `speckit serve all`'s JSON log lines as they come; knows each
    service's address once it logs "serving"."""

    def __init__(self, proc: subprocess.Popen[str], log: Path):
        self.addrs: dict[str, str] = {}
        self.ready = threading.Event()
        self._proc = proc
        self._log = log
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stderr is not None
        with self._log.open("w") as out:
            for line in self._proc.stderr:
                out.write(line)
                out.flush()
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if rec.get("msg") == "serving" and rec.get("service") in ROLES:
                    self.addrs[rec["service"]] = rec["address"]
                    if len(self.addrs) == len(ROLES):
                        self.ready.set()
        self.ready.set()  # the process ended: wake the waiter


@pytest.fixture(scope="session")
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StackUnderTest]:
    if EXTERNAL:
        yield _external()
        return
    llama = request.getfixturevalue("llama_server")
    tmp = tmp_path_factory.mktemp("stack")
    workspace = tmp / "workspace"
    workspace.mkdir()
    policy = tmp / "model_policy.toml"
    text = CPU_POLICY.read_text(encoding="utf-8")
    assert COMPOSE_LLM_URL in text
    policy.write_text(text.replace(COMPOSE_LLM_URL, llama.base_url), encoding="utf-8")

    db_name = ""
    # The suite's root conftest (several conftest modules share that name, so
    # it is looked up as the plugin pytest registered for its path).
    root = request.config.pluginmanager.get_plugin(str(ROOT / "tests" / "conftest.py"))
    if request.getfixturevalue("_pg_ok"):
        db_name = f"speckit_it_{uuid.uuid4().hex[:12]}"
        with root._pg_admin_connect() as conn:
            conn.execute(f'CREATE DATABASE "{db_name}"')
        base = root.PG_ADMIN_DSN.rsplit("/", 1)[0].replace(
            "postgresql://", "postgresql+psycopg://", 1
        )
        database_url = f"{base}/{db_name}"
    else:
        database_url = f"sqlite:///{tmp / 'speckit.db'}"

    token = secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPECKIT_")}
    env.update({f"SPECKIT_{r.upper()}_ADDR": "127.0.0.1:0" for r in ROLES})
    env.update(
        {
            "SPECKIT_POLICY": str(policy),
            "SPECKIT_HOME": str(tmp / "home"),
            "SPECKIT_DATABASE_URL": database_url,
            "SPECKIT_AUTH_TOKEN": token,
            "SPECKIT_LOG_FORMAT": "json",
            "SPECKIT_GRACE_S": "3",
            # PatchLoop opens workspaces only under these folders (where supported).
            "SPECKIT_WORKSPACE_ROOTS": str(workspace),
        }
    )
    cli = [sys.executable, "-m", "speckit_reflex.cli.main"]
    # The compose migrate job's command, then the services.
    migrate = subprocess.run(
        [*cli, "db", "upgrade"], env=env, capture_output=True, text=True, timeout=120
    )
    assert migrate.returncode == 0, migrate.stderr
    log = tmp / "services.log"
    proc = subprocess.Popen(
        [*cli, "serve", "all"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    serving = _Serving(proc, log)
    try:
        if not serving.ready.wait(START_TIMEOUT_S) or len(serving.addrs) < len(ROLES):
            raise RuntimeError(f"speckit serve all did not start:\n{log.read_text()[-3000:]}")
        yield StackUnderTest(
            addrs=dict(serving.addrs), token=token, workspace=workspace, external=False, logs=[log]
        )
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if db_name:
            with root._pg_admin_connect() as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
