"""The compose `cpu` profile run as processes: every command a container runs
(migration, the four services, the model server, their healthchecks, the
`cli` service), with the environment the compose file gives it. What Docker
would provide is translated, nothing else: service hostnames become
127.0.0.1, each container port a free port here, each mount target its
source folder, the image's `speckit-healthcheck` compose/healthcheck.py, and
the `postgres` service a fresh database on the local server."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from speckit_reflex.bakeoff import copy_tree
from speckit_reflex.demo import DEMO_CRATE
from tests.ports import StartFailed, pick_port

from .compose_checks import COMPOSE_DIR, ROOT, Stack

pytestmark = [pytest.mark.llm, pytest.mark.cargo, pytest.mark.postgres]
SPECKIT = [sys.executable, "-m", "speckit_reflex.cli.main"]
HEALTH_TIMEOUT_S = 180.0


class Translation:
    """What Docker would provide, as this host provides it."""

    def __init__(self, st: Stack, tmp: Path, database_url: str):
        self.st = st
        self.tmp = tmp
        self.database_url = database_url
        ports = {int(p) for s in st.active().values() for p in re.findall(r":(\d{4,5})\b", str(s))}
        # Picked, then bound by the children: a window (tests/ports.py); see _start for the retry.
        self.ports = {p: pick_port() for p in ports if p != 5432}
        self.hosts = set(st.active())
        # One container port, many processes on one host: each service's
        # /metrics gets a port of its own here.
        self.metrics_ports: dict[str, int] = {}

    def text(self, s: str) -> str:
        s = re.sub(
            rf"\b({'|'.join(self.hosts)}):(\d+)",
            lambda m: f"127.0.0.1:{self.ports.get(int(m.group(2)), m.group(2))}",
            s,
        )
        s = re.sub(
            r"\b(0\.0\.0\.0|127\.0\.0\.1):(\d{4,5})\b",
            lambda m: f"{m.group(1)}:{self.ports.get(int(m.group(2)), m.group(2))}",
            s,
        )
        return s

    def path(self, name: str, svc: dict, value: str) -> str:  # type: ignore[type-arg]
        found = self.st.host_path(svc, value)
        if found is None:
            provided = self.st.image.provides(value)
            # Else the path is the container's own: a private folder here.
            return (
                str(ROOT / provided)
                if provided
                else str(self.tmp / "containers" / name / value.lstrip("/"))
            )
        src, rel = found
        if src.startswith("."):
            host = self.tmp / "mounts" / Path(src).name
            if not host.exists():
                shutil.copytree(COMPOSE_DIR / src, host)
                for f in host.rglob("*.toml"):
                    f.write_text(self.text(f.read_text()))
        elif src.startswith("/"):
            host = self.tmp / "workspace"
        else:
            host = self.tmp / "volumes" / src
        host.mkdir(parents=True, exist_ok=True)
        return str(host / rel) if rel != "." else str(host)

    def argv(self, svc: dict, argv: list[str]) -> list[str]:  # type: ignore[type-arg]
        head = {
            "speckit": SPECKIT,
            "speckit-healthcheck": [sys.executable, str(COMPOSE_DIR / "healthcheck.py")],
            "python": [sys.executable],
            "python3": [sys.executable],
        }
        out = [*head.get(argv[0], [argv[0]])]
        for i, word in enumerate(argv[1:], 1):
            port = argv[i - 1] == "--port" and int(word) in self.ports
            out.append(str(self.ports[int(word)]) if port else self.text(word))
        return out

    def env(self, name: str) -> dict[str, str]:
        """The container's environment; the toolchain variables stay this host's."""
        svc = self.st.services[name]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPECKIT_")}
        image_env = {k: v for k, v in self.st.image.env.items() if k.startswith("SPECKIT_")}
        for k, v in {**image_env, **self.st.env(svc)}.items():
            if k == "SPECKIT_DATABASE_URL":
                v = self.database_url
            elif k == "SPECKIT_METRICS_ADDR":
                port = self.metrics_ports.setdefault(name, pick_port())
                v = f"127.0.0.1:{port}"
            elif v.startswith("/"):
                v = self.path(name, svc, v)
            env[k] = self.text(v)
        return env


def _order(st: Stack) -> list[str]:
    done: list[str] = []

    def visit(name: str) -> None:
        for dep in st.active()[name].get("depends_on") or {}:
            visit(dep)
        if name not in done:
            done.append(name)

    for name in st.active():
        visit(name)
    return [n for n in done if n not in ("postgres", "cli")]


def _start(
    st: Stack, tmp: Path, database_url: str
) -> tuple[Translation, list[subprocess.Popen[bytes]], list[str]]:
    """Every service in dependency order, each healthy before the next starts.

    StartFailed when a child stops before it is healthy because its port is
    taken: picked ports are free only until the child binds them (tests/ports.py),
    and the whole stack then starts again on fresh ones (the earlier children
    were told the lost port)."""
    tmp.mkdir(parents=True)
    tr = Translation(st, tmp, database_url)
    procs: list[subprocess.Popen[bytes]] = []
    started: list[str] = []
    try:
        for name in _order(st):
            svc = st.services[name]
            argv, env = tr.argv(svc, st.argv(svc)), tr.env(name)
            if svc.get("restart") == "no":  # a job: must exit 0 before the rest starts
                job = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
                assert job.returncode == 0, f"{name}: {job.stderr}"
                continue
            log_path = tmp / f"{name}.log"
            with log_path.open("wb") as log:
                procs.append(
                    subprocess.Popen(
                        argv, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL
                    )
                )
            test = svc["healthcheck"]["test"][1:]
            # A start takes seconds (the model server's, tens); the rest is margin.
            deadline = time.monotonic() + HEALTH_TIMEOUT_S
            # As Docker does: run the healthcheck until it passes.
            while (
                subprocess.run(
                    tr.argv(svc, test), env=env, capture_output=True, timeout=30
                ).returncode
                != 0
            ):
                if procs[-1].poll() is not None:
                    tail = log_path.read_text(errors="replace")[-2000:]
                    if "in use" in tail:  # "port N is already in use", "address in use"
                        raise StartFailed(f"{name} lost its port:\n{tail}")
                    raise AssertionError(f"{name} exited:\n{tail}")
                assert time.monotonic() < deadline, (
                    f"{name} not healthy:\n{log_path.read_text(errors='replace')[-2000:]}"
                )
                time.sleep(0.5)
            started.append(name)
    except BaseException:
        _stop(procs)
        raise
    return tr, procs, started


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in reversed(procs):
        p.terminate()
    for p in reversed(procs):
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


@pytest.fixture
def compose_processes(
    tmp_path: Path, postgres_url: str
) -> Iterator[tuple[Stack, Translation, list[str]]]:
    st = Stack.load("cpu")
    for tries in range(1, 4):
        try:
            # A folder per try: its translated mounts name that try's ports.
            tr, procs, started = _start(st, tmp_path / f"try-{tries}", postgres_url)
            break
        except StartFailed:
            if tries == 3:
                raise
    try:
        yield st, tr, started
    finally:
        _stop(procs)


def test_the_cpu_profile_runs_as_processes(
    compose_processes: tuple[Stack, Translation, list[str]],
) -> None:
    st, tr, started = compose_processes
    assert set(started) == {"capsule", "inference", "router", "patchloop", "llm"}
    cli = st.services["cli"]
    env = tr.env("cli")
    status = subprocess.run(
        tr.argv(cli, st.argv(cli)), env=env, capture_output=True, text=True, timeout=60
    )
    assert status.returncode == 0, status.stderr
    # A crate in the workspace, fixed through the stack as the cli container would.
    crate = Path(env["TMPDIR"]) / "broken-crate"
    copy_tree(DEMO_CRATE, crate)
    run = subprocess.run(
        [*SPECKIT, "reflex", "run", str(crate), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert '"outcome": "fixed"' in run.stdout
    models = subprocess.run(
        [*SPECKIT, "reflex", "models", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert '"smollm2-135m-instruct"' in models.stdout, models.stdout
    # Metrics are on in compose: each service serves /metrics, and the run moved PatchLoop's.
    assert set(tr.metrics_ports) >= {"capsule", "inference", "router", "patchloop"}
    for name, port in tr.metrics_ports.items():
        if name not in started:
            continue
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            body = resp.read().decode()
        assert "speckit_rpc_server_handled_total" in body, name
        if name == "patchloop":
            assert re.search(
                r'^speckit_patchloop_runs_total\{[^}]*outcome="fixed"[^}]*\} [1-9]', body, re.M
            ), body
