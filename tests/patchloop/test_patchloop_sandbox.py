"""The sandboxed build (GR-010) with hostile build scripts, on real cargo."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from speckit_reflex.patchloop.diagnostics import parse_cargo_output
from speckit_reflex.patchloop.sandbox import BuildRunner, NetworkIsolation, scrub_environment

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
    return BuildRunner(NetworkIsolation(), environ={**os.environ, **SECRETS})


async def test_endless_build_script_is_killed_with_its_children(crate, runner: BuildRunner, tmp_path: Path):
    ws = crate("sleepy_build")
    target = tmp_path / "target"
    started = time.monotonic()
    build = asyncio.create_task(runner.run(CHECK, ws, target, timeout_s=6))
    # The hang must really be under way (build script compiled, child started).
    while not _sleepers("86399.5") and not build.done():
        await asyncio.sleep(0.05)
    assert _sleepers("86399.5"), "the build script never started its child"
    result = await build
    elapsed = time.monotonic() - started
    assert result.timed_out and result.returncode is None
    assert 6 <= elapsed < 6 + 3, f"a 6 s limit ended the build after {elapsed:.1f} s"
    time.sleep(0.3)
    assert _sleepers("86399.5") == [], "the build script's child survived the kill"


async def test_build_script_finds_no_api_key(crate, runner: BuildRunner, tmp_path: Path):
    ws = crate("env_probe")
    result = await runner.run(CHECK, ws, tmp_path / "target", timeout_s=120)
    assert result.returncode == 0, result.stderr[-2000:]
    warnings = _build_warnings(result.stdout) + [result.stderr]
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
    if runner.isolation_note:
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
    env = scrub_environment({
        "PATH": "/bin", "HOME": "/root", "CARGO_HOME": "/c", "RUSTUP_HOME": "/r", "LANG": "C.UTF-8",
        "OPENAI_API_KEY": "x", "SPECKIT_AUTH_TOKEN": "t", "HTTP_PROXY": "http://p", "LD_PRELOAD": "/evil.so",
        "RUSTC_WRAPPER_TOKEN": "t",
    })
    assert env == {"PATH": "/bin", "HOME": "/root", "CARGO_HOME": "/c", "RUSTUP_HOME": "/r", "LANG": "C.UTF-8"}


async def test_runner_sets_private_target_dir_and_offline(tmp_path: Path):
    runner = BuildRunner(NetworkIsolation(), environ={"PATH": os.environ["PATH"], "OPENAI_API_KEY": "sk"})
    result = await runner.run(["env"], tmp_path, tmp_path / "target", timeout_s=10)
    lines = set(result.stdout.splitlines())
    assert f"CARGO_TARGET_DIR={tmp_path / 'target'}" in lines
    assert "CARGO_NET_OFFLINE=true" in lines
    assert not any(line.startswith("OPENAI_API_KEY") for line in lines)


def test_isolation_probe_falls_back_and_says_so():
    iso = NetworkIsolation(candidates=[("/nonexistent-unshare", "--net")])
    assert iso.probe() == ()
    assert "not cut off from the network" in iso.note
    assert NetworkIsolation(enabled=False).note.startswith("network isolation disabled")


async def test_loop_records_the_isolation_note(crate, make_loop, tmp_path: Path):
    from patchloop_support import kinds, run_all

    loop, *_ = make_loop(isolation=NetworkIsolation(candidates=[("/nonexistent-unshare",)]))
    evs, result = await run_all(loop, workspace=str(crate("field_typo")))
    assert any("not cut off from the network" in n for n in kinds(evs, "note"))
