"""The sandboxed build (GR-010) with hostile build scripts, on real cargo."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from speckit_reflex.patchloop.diagnostics import parse_cargo_output
from speckit_reflex.patchloop.sandbox import (
    BuildRunner,
    Candidate,
    Sandbox,
    default_candidates,
    scrub_environment,
)
from tests.waiting import eventually

CHECK = ["cargo", "check", "--offline", "--message-format=json"]
SECRETS = {
    "OPENAI_API_KEY": "sk-test-leak-1",
    "DEEPSEEK_API_KEY": "sk-test-leak-2",
    "GITHUB_TOKEN": "ghp-test-leak",
    "AWS_SECRET_ACCESS_KEY": "aws-test-leak",
    "DB_PASSWORD": "hunter2",
}


def _sleepers(marker: str) -> list[int]:
    """Pids whose command line carries `marker`."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmd and "sleep" in cmd:
            out.append(int(pid))
    return out


def _build_warnings(stdout: str) -> list[str]:
    return [d.message for d in parse_cargo_output(stdout).warnings]


@pytest.fixture
def runner() -> BuildRunner:
    return BuildRunner(Sandbox(), environ={**os.environ, **SECRETS})


async def test_endless_build_script_is_killed_with_its_children(
    crate, runner: BuildRunner, tmp_path: Path
):
    ws = crate("sleepy_build")
    target = tmp_path / "target"
    started = time.monotonic()
    build = asyncio.create_task(runner.run(CHECK, ws, target, timeout_s=6))
    # The hang must really be under way (build script compiled, child started).
    await eventually(
        lambda: _sleepers("86399.5") or build.done(), what="the build script's child or the end"
    )
    assert _sleepers("86399.5"), "the build script never started its child"
    result = await build
    elapsed = time.monotonic() - started
    assert result.timed_out and result.returncode is None
    # The 6 s limit ended it, not the build (its script sleeps for a day). Upper
    # bound 6 + 20 s: killing the process tree takes well under a second; the
    # rest is margin for a loaded 2-core machine.
    assert 6 <= elapsed < 6 + 20, f"a 6 s limit ended the build after {elapsed:.1f} s"
    # The killed child leaves /proc (a zombie has no command line) as soon as it dies.
    await eventually(
        lambda: _sleepers("86399.5") == [], what="the build script's child gone after the kill"
    )


async def test_build_script_finds_no_api_key(crate, runner: BuildRunner, tmp_path: Path):
    ws = crate("env_probe")
    result = await runner.run(CHECK, ws, tmp_path / "target", timeout_s=120)
    assert result.returncode == 0, result.stderr[-2000:]
    warnings = [*_build_warnings(result.stdout), result.stderr]
    assert any("probe-secrets:" in w for w in warnings)
    leaked = [v for v in SECRETS.values() if v in result.stdout + result.stderr]
    assert leaked == []
    assert not any(f"probe-secrets:{name}" in result.stdout + result.stderr for name in SECRETS)


def test_env_probe_detects_a_key_when_not_scrubbed(crate, tmp_path: Path):
    """Control: the probe crate does see a key in an unscrubbed environment."""
    ws = crate("env_probe")
    env = {**os.environ, **SECRETS, "CARGO_TARGET_DIR": str(tmp_path / "t")}
    proc = subprocess.run(CHECK, cwd=ws, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "OPENAI_API_KEY" in proc.stdout + proc.stderr


async def test_build_script_cannot_reach_the_network(crate, runner: BuildRunner, tmp_path: Path):
    await asyncio.to_thread(runner.sandbox.probe)
    if not {layer.name: layer.active for layer in runner.layers()}["network"]:
        pytest.skip(runner.isolation_note)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    ws = crate("env_probe")
    (ws / "port.txt").write_text(str(listener.getsockname()[1]))
    try:
        result = await runner.run(CHECK, ws, tmp_path / "target", timeout_s=120)
        assert result.returncode == 0, result.stderr[-2000:]
        out = result.stdout + result.stderr
        assert "probe-network:failed" in out and "probe-network:connected" not in out
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()


def test_scrubbed_environment_keeps_the_toolchain_and_drops_secrets():
    env = scrub_environment(
        {
            "PATH": "/bin",
            "HOME": "/root",
            "CARGO_HOME": "/c",
            "RUSTUP_HOME": "/r",
            "LANG": "C.UTF-8",
            "OPENAI_API_KEY": "x",
            "SPECKIT_AUTH_TOKEN": "t",
            "HTTP_PROXY": "http://p",
            "LD_PRELOAD": "/evil.so",
            "RUSTC_WRAPPER_TOKEN": "t",
        }
    )
    assert env == {
        "PATH": "/bin",
        "HOME": "/root",
        "CARGO_HOME": "/c",
        "RUSTUP_HOME": "/r",
        "LANG": "C.UTF-8",
    }


async def test_runner_sets_private_target_dir_and_offline(tmp_path: Path):
    runner = BuildRunner(Sandbox(), environ={"PATH": os.environ["PATH"], "OPENAI_API_KEY": "sk"})
    result = await runner.run(["env"], tmp_path, tmp_path / "target", timeout_s=10)
    lines = set(result.stdout.splitlines())
    assert f"CARGO_TARGET_DIR={tmp_path / 'target'}" in lines
    assert "CARGO_NET_OFFLINE=true" in lines
    assert not any(line.startswith("OPENAI_API_KEY") for line in lines)


def test_sandbox_probe_falls_back_and_never_claims_a_missing_layer():
    sandbox = Sandbox(
        candidates=[
            Candidate(("/nonexistent-unshare", "--net"), fs=True, proc=True, caps=True),
            Candidate(("unshare", "--net")),
        ]
    )
    sandbox.probe()
    active = {layer.name: layer.active for layer in sandbox.layers()}
    assert active == {
        "network": True,
        "pid": False,
        "filesystem": False,
        "capabilities": False,
        "environment": True,
        "time_limit": True,
    }
    assert (
        "missing: pid" in sandbox.note
        and "filesystem" in sandbox.note
        and "nonexistent-unshare" in sandbox.note
    )
    nothing = Sandbox(candidates=[Candidate(("/nonexistent-unshare",))])
    nothing.probe()
    assert [layer.name for layer in nothing.layers() if not layer.active] == [
        "network",
        "pid",
        "filesystem",
        "capabilities",
    ]


def test_a_setup_step_that_fails_is_not_claimed(tmp_path: Path):
    """sandbox_init exits 126 when a mount fails; the probe then takes the next configuration."""
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'speckit sandbox: mount failed' >&2\nexit 126\n")
    broken.chmod(0o755)
    sandbox = Sandbox(
        candidates=[
            Candidate(
                ("unshare", "--net", "--pid", "--fork", "--mount"), fs=True, proc=True, caps=True
            ),
            Candidate(("unshare", "--net", "--pid", "--fork", "--kill-child")),
        ],
        python=str(broken),
    )
    sandbox.probe()
    active = {layer.name: layer.active for layer in sandbox.layers()}
    assert not active["filesystem"] and not active["capabilities"] and active["network"]
    assert "mount failed" in sandbox.note


async def test_loop_records_the_isolation_note(crate, make_loop, tmp_path: Path):
    from patchloop_support import kinds, run_all

    loop, *_ = make_loop(isolation=Sandbox(candidates=[Candidate(("/nonexistent-unshare",))]))
    evs, _result = await run_all(loop, workspace=str(crate("field_typo")))
    assert any(
        n.startswith("build sandbox incomplete on this host, missing: network")
        for n in kinds(evs, "note")
    )


async def test_root_in_the_sandbox_cannot_remount_its_way_out(tmp_path: Path):
    """The build is root inside its namespaces; without capabilities it cannot
    turn a read-only bind writable (here: the host's /usr) or mount anything."""
    runner = BuildRunner(Sandbox())
    await asyncio.to_thread(runner.sandbox.probe)
    if not {layer.name: layer.active for layer in runner.layers()}["capabilities"]:
        pytest.skip(runner.isolation_note)
    probe = Path(f"/usr/speckit-caps-probe-{os.getpid()}")
    script = (
        f"mount -o remount,rw,bind /usr && touch {probe}; mount -t tmpfs none /tmp && echo mounted"
    )
    try:
        result = await runner.run(["sh", "-c", script], tmp_path, tmp_path / "target", timeout_s=30)
        assert not await asyncio.to_thread(probe.exists), "the build wrote into the host's /usr"
        assert "mounted" not in result.stdout
        assert "permission denied" in result.stderr.lower()
    finally:
        await asyncio.to_thread(probe.unlink, missing_ok=True)


@pytest.mark.skipif(
    not (shutil.which("setpriv") and Path("/usr/bin/python3").exists()),
    reason="needs setpriv and a system python3 an unprivileged user can run",
)
def test_a_non_root_service_gets_the_layers_through_a_user_namespace():
    """The user-namespace twin of the strongest configuration, started as
    nobody (the service's own python lives under /root here, so the system
    python3 runs sandbox_init; pytest's tmp_path is not reachable by nobody)."""
    home = Path(tempfile.mkdtemp(prefix="speckit-nobody-", dir="/tmp"))
    work = home / "ws"
    work.mkdir()
    for p in (home, work):
        os.chown(p, 65534, 65534)
    strongest = next(c for c in default_candidates() if "--user" in c.unshare and c.fs)
    sandbox = Sandbox(candidates=[strongest], python="/usr/bin/python3")
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "CARGO_HOME": "/nonexistent",
        "RUSTUP_HOME": "/nonexistent",
    }
    script = (
        "ls /proc | grep -c '^[0-9]'; touch /usr/x || echo usr-refused; touch ok && echo ws-written"
    )
    argv = sandbox.wrap(
        ["sh", "-c", script], cwd=work, writable=[work], environ=env, candidate=strongest
    )
    try:
        proc = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 0, proc.stderr
        pids, *rest = proc.stdout.split()
        assert int(pids) <= 3 and rest == ["usr-refused", "ws-written"], proc.stdout
        assert (work / "ok").exists() and not Path("/usr/x").exists()
    finally:
        shutil.rmtree(home)
