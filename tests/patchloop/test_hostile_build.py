"""A hostile build through the real PatchLoop service (`speckit serve patchloop`
in its own process, a cloud key in its environment) and real cargo.

The crate's build.rs hunts every /proc/*/environ for the key, tries to write
into the user's workspace and into a folder outside it, and to read a host
file; it reports what it got as a compile error, which comes back in the
run's own events. None of it may succeed, and the user's tree stays the same
byte for byte. A control case shows the hunt does find a key where the
sandbox has no PID layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from patchloop_support import CRATES, tree_digest

from speckit_reflex.clients.channel import ChannelConfig, open_channel
from speckit_reflex.clients.patchloop import PatchLoopClient
from speckit_reflex.patchloop.sandbox import BuildRunner, Candidate, Sandbox
from speckit_reflex.v1 import patchloop_pb2
from tests.ports import DeadEndpoint, StartFailed, start_on_free_port

KEY = "sk-test-hostile-build-5e1f0c"


def hostile_crate(dest: Path, writes: list[Path], reads: list[Path]) -> Path:
    shutil.copytree(CRATES / "hostile_build", dest)
    lines = [KEY, *(f"w {p}" for p in writes), *(f"r {p}" for p in reads)]
    (dest / "hostile.txt").write_text("\n".join(lines) + "\n")
    return dest


def report(events: list[patchloop_pb2.RunEvent]) -> str:
    """The build script's report: the message of the first build's compile_error!."""
    first = next(
        ev.compile_finished for ev in events if ev.WhichOneof("kind") == "compile_finished"
    )
    return next(d.message for d in first.diagnostics if "hunt scanned=" in d.message)


@pytest.fixture
def patchloop_process(tmp_path: Path) -> Iterator[str]:
    """`speckit serve patchloop` with a cloud key in its environment; yields its address."""
    with serve_patchloop(tmp_path, tmp_path / "home") as addr:
        yield addr


@contextlib.contextmanager
def serve_patchloop(tmp_path: Path, home: Path) -> Iterator[str]:
    no_router = DeadEndpoint()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPECKIT_")}
    env.update(
        {
            "OPENAI_API_KEY": KEY,
            "SPECKIT_WORKSPACE_ROOTS": str(tmp_path / "user"),
            "SPECKIT_HOME": str(home),
            "SPECKIT_GRACE_S": "1",
            # No Router: the run ends refused after its first build, which is all this needs.
            "SPECKIT_ROUTER_ADDR": no_router.addr,
        }
    )
    log_path = tmp_path / "patchloop.log"

    def start(port: int) -> tuple[subprocess.Popen[bytes], str]:
        """Serving on `port`, or StartFailed (the port taken in the window: tests/ports.py)."""
        addr = f"127.0.0.1:{port}"
        with log_path.open("w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "speckit_reflex.cli.main", "serve", "patchloop"],
                env={**env, "SPECKIT_PATCHLOOP_ADDR": addr},
                cwd=tmp_path,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60  # starts in seconds; the rest is margin
        with grpc.insecure_channel(addr) as ch:
            while True:
                try:
                    if (
                        health_pb2_grpc.HealthStub(ch)
                        .Check(health_pb2.HealthCheckRequest(), timeout=1)
                        .status
                        == 1
                    ):
                        return proc, addr
                except grpc.RpcError:
                    pass
                if proc.poll() is not None:
                    raise StartFailed(log_path.read_text()[-2000:])
                if time.monotonic() > deadline:
                    proc.kill()
                    proc.wait(30)
                    raise AssertionError(f"patchloop did not start: {log_path.read_text()}")
                time.sleep(0.2)

    proc, addr = start_on_free_port(start)
    try:
        yield addr
    finally:
        proc.terminate()
        proc.wait(30)
        no_router.close()


async def test_hostile_build_script_gets_no_key_and_writes_nothing(
    patchloop_process: str, tmp_path: Path
):
    user = tmp_path / "user"
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = tmp_path / "host-secret.txt"
    secret.write_text("host-secret-3b9d\n")
    crate = user / "crate"
    # /tmp inside the sandbox is its own tmpfs: a write there may succeed, but never reaches the host's /tmp.
    private_tmp = Path(f"/tmp/speckit-planted-{os.getpid()}-{time.monotonic_ns()}")
    hostile_crate(
        crate,
        writes=[crate / "src" / "planted.rs", outside / "planted.txt", private_tmp],
        reads=[secret],
    )
    before = tree_digest(crate)
    channel = open_channel(ChannelConfig(address=patchloop_process))
    try:
        client = PatchLoopClient(channel)
        settings = await client.build_settings()
        layers = {layer.name: layer for layer in settings.sandbox}
        missing = [f"{n}: {layer.detail}" for n, layer in layers.items() if not layer.active]
        assert missing == [], f"this host should give every layer: {missing}"
        events, result = await client.run_to_end(
            str(crate), max_attempts=1, compiler_fast_path=False
        )
    finally:
        await channel.close()

    found = report(events)
    scanned = int(re.search(r"hunt scanned=(\d+)", found).group(1))
    assert scanned >= 1, found  # the hunt ran (it reads its own environ at least)
    assert "found=[]" in found, f"the build script found the key: {found}"
    assert KEY not in found
    assert found.count("refused(") == 3, found  # two writes and the read
    assert f"w {private_tmp} WRITTEN" in found and found.count("WRITTEN") == 1, found
    assert "READ(" not in found and "3b9d" not in found
    # No Router: the loop stops after the build, an error of the run (not a refusal).
    assert result.outcome == patchloop_pb2.OUTCOME_ERROR, result
    assert result.reason.startswith("router_unavailable"), result.reason
    assert tree_digest(crate) == before
    assert list(outside.iterdir()) == []
    assert not await asyncio.to_thread(private_tmp.exists)
    assert secret.read_text() == "host-secret-3b9d\n"


async def test_control_without_the_pid_and_filesystem_layers_the_hunt_succeeds(tmp_path: Path):
    """The same crate under network isolation only: it finds the key in a
    process that holds it and writes outside the scratch copy. This is what
    the layers above take away."""
    holder = await asyncio.to_thread(
        subprocess.Popen, ["sleep", "60"], env={"PATH": os.environ["PATH"], "OPENAI_API_KEY": KEY}
    )
    try:
        outside = tmp_path / "outside"
        outside.mkdir()
        crate = hostile_crate(tmp_path / "crate", writes=[outside / "planted.txt"], reads=[])
        weak = BuildRunner(Sandbox(candidates=[Candidate(("unshare", "--net"))]))
        result = await weak.run(
            ["cargo", "check", "--offline", "--message-format=json"],
            crate,
            tmp_path / "target",
            timeout_s=120,
        )
    finally:
        holder.kill()
        holder.wait()
    out = result.stdout + result.stderr
    assert re.search(rf"found=\[[0-9,]*{holder.pid}", out), out[-2000:]
    assert f"w {outside / 'planted.txt'} WRITTEN" in out
    assert (outside / "planted.txt").exists()


async def test_status_shows_each_sandbox_layer(services_factory, tmp_path: Path):
    """`speckit reflex status` shows every layer as PatchLoop reports it."""
    services = await services_factory(["capsule", "inference", "router", "patchloop"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPECKIT_")}
    env.update({f"SPECKIT_{n.upper()}_ADDR": services.addr(n) for n in ("router", "patchloop")})
    env["COLUMNS"] = "240"

    def status(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "speckit_reflex.cli.main", "reflex", "status", *extra],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    proc = await asyncio.to_thread(status, "--json")
    assert proc.returncode == 0, proc.stderr
    sandbox = json.loads(proc.stdout)["sandbox"]
    assert {x["name"]: x["active"] for x in sandbox["layers"]} == {
        "network": True,
        "pid": True,
        "filesystem": True,
        "capabilities": True,
        "environment": True,
        "time_limit": True,
    }
    assert sandbox["workspace_roots"] == [str(await asyncio.to_thread(tmp_path.resolve))]
    assert sandbox["profiles"]["check"][:2] == ["cargo", "check"]
    table = (await asyncio.to_thread(status)).stdout
    assert "sandbox: filesystem" in table and "MISSING" not in table


async def test_a_revert_after_a_build_never_writes_through_a_link_the_build_planted(
    patchloop_process: str, tmp_path: Path
):
    """rustc's own fix of src/payload/victim.rs is tried and undone (the second
    build breaks on purpose); between the two, the build script swapped the
    copy's src/payload/ folder for a link to a host folder. Undoing the fix must
    not write (nor delete) anything there."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.rs").write_text("a host file the revert must not replace\n")
    crate = tmp_path / "user" / "crate"
    shutil.copytree(CRATES / "link_swap_build", crate)
    (crate / "target.txt").write_text(f"{outside}\n")
    before = tree_digest(crate)
    channel = open_channel(ChannelConfig(address=patchloop_process))
    try:
        events, result = await PatchLoopClient(channel).run_to_end(str(crate), max_attempts=1)
    finally:
        await channel.close()
    applied = [ev.patch_applied for ev in events if ev.WhichOneof("kind") == "patch_applied"]
    assert applied and applied[0].files == ["src/payload/victim.rs"], (
        events
    )  # the fast path ran, then was undone
    assert result.outcome != patchloop_pb2.OUTCOME_FIXED
    assert sorted(p.name for p in outside.iterdir()) == ["victim.rs"]
    assert (outside / "victim.rs").read_text() == "a host file the revert must not replace\n"
    assert tree_digest(crate) == before


def _setuid_files(root: Path, name: str) -> list[Path]:
    return [p for p in root.rglob(name) if p.stat().st_mode & stat.S_ISUID]


async def test_a_setuid_file_a_build_leaves_in_the_cache_runs_as_no_one_else(tmp_path: Path):
    """A build is root in its namespaces when the service is root: it can
    leave a setuid-root program in its target dir, which is the persistent
    cache under SPECKIT_HOME. No other user of the host may reach it, even
    when SPECKIT_HOME itself is open to all (the default umask)."""
    home = Path(tempfile.mkdtemp(prefix="speckit-home-"))
    try:
        await asyncio.to_thread(home.chmod, 0o755)
        with serve_patchloop(tmp_path, home) as addr:
            crate = tmp_path / "user" / "crate"
            shutil.copytree(CRATES / "setuid_build", crate)
            channel = open_channel(ChannelConfig(address=addr))
            try:
                events, _ = await PatchLoopClient(channel).run_to_end(str(crate), max_attempts=1)
            finally:
                await channel.close()
        planted = await asyncio.to_thread(_setuid_files, home, "planted-id")
        assert planted, [ev for ev in events if ev.WhichOneof("kind") == "compile_finished"]
        for path in planted:
            try:
                out = await asyncio.to_thread(
                    subprocess.run,
                    [str(path)],
                    user="nobody",
                    capture_output=True,
                    text=True,
                    timeout=10,
                )
            except PermissionError:
                continue
            assert "euid=0" not in out.stdout, f"{path} runs as root for nobody: {out.stdout}"
            assert out.returncode != 0, out.stdout
    finally:
        shutil.rmtree(home, ignore_errors=True)
