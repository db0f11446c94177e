"""`speckit serve all --policy FILE --mode reflex` with SPECKIT_OPENAI_ADDR:
the four services and the OpenAI endpoint in one process, as a newcomer
starts them, answering the `openai` client with the local model before any
bakeoff; and what `--policy` and `--mode` change."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import openai

from speckit_reflex.bakeoff.readiness import wait_for_reflex_route
from speckit_reflex.cli.serve import effective_policy
from speckit_reflex.clients.channel import ChannelConfig, open_channel
from speckit_reflex.clients.router import RouterClient
from tests.bakeoff.conftest import run_speckit, speckit_env
from tests.inference.fakes import FakeModelServer
from tests.ports import pick_port, start_with_fresh_ports, wait_ready

POLICY = """version = "1.0.0"
[routing.reflex]
enabled = false
model = "fake-coder"
[[routing.reflex.backends]]
name = "local"
kind = "vllm"
endpoint = "{url}"
models = ["fake-coder"]
[routing.health]
probe_interval_s = 1
probe_timeout_ms = 2000
"""


def test_mode_reflex_enables_reflex_and_waives_the_verdict(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(POLICY.format(url="http://127.0.0.1:1/v1"))
    as_written = effective_policy(str(path), "policy").policy.routing.reflex
    reflex = effective_policy(str(path), "reflex").policy.routing.reflex
    assert (as_written.enabled, as_written.require_verdict) == (False, True)
    assert (reflex.enabled, reflex.require_verdict) == (True, False)


async def test_serve_all_runs_the_openai_endpoint_with_the_policy_and_mode(tmp_path: Path) -> None:
    fake = await FakeModelServer(
        kind="vllm", models=["fake-coder"], reply="hello from the local model"
    ).start()
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY.format(url=fake.base_url))

    async def start() -> tuple[subprocess.Popen[str], dict[str, str], str]:
        # Five ports told to the child: on a start lost to a taken port, five new ones.
        addrs = {
            name: f"127.0.0.1:{pick_port()}"
            for name in ("router", "inference", "patchloop", "capsule")
        }
        openai_addr = f"127.0.0.1:{pick_port()}"
        env = speckit_env(
            addrs, SPECKIT_OPENAI_ADDR=openai_addr, SPECKIT_HOME=str(tmp_path / "home")
        )
        proc = await asyncio.to_thread(
            subprocess.Popen,
            [
                sys.executable,
                "-m",
                "speckit_reflex.cli.main",
                "serve",
                "all",
                "--policy",
                str(policy),
                "--mode",
                "reflex",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            await wait_ready(
                lambda: _answers(f"http://{openai_addr}/v1/models"),
                lambda: _exited(proc),
                what="speckit serve all",
            )
        except BaseException:
            _stop(proc)
            raise
        return proc, addrs, openai_addr

    proc, addrs, openai_addr = await start_with_fresh_ports(start)
    try:
        async with open_channel(ChannelConfig(addrs["router"])) as channel:
            await wait_for_reflex_route(RouterClient(channel), timeout_s=30, poll_s=0.1)
        client = openai.AsyncOpenAI(
            base_url=f"http://{openai_addr}/v1", api_key="unused", max_retries=0
        )
        raw = await client.chat.completions.with_raw_response.create(
            model="speckit/auto", messages=[{"role": "user", "content": "hi"}]
        )
        assert raw.parse().choices[0].message.content == "hello from the local model"
        assert raw.headers["x-speckit-route"] == "reflex:fake-coder@local"
        assert raw.headers["x-speckit-verdict-waived"] == "true"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.to_thread(proc.communicate, timeout=60)
        await fake.stop()
    assert proc.returncode == 0, err
    assert "mode reflex: the bakeoff gate is waived" in err
    assert f"base_url=http://{openai_addr}/v1" in err


async def _answers(url: str) -> bool:
    """True once `url` answers 200."""
    async with httpx.AsyncClient() as http:
        try:
            return (await http.get(url, timeout=5)).status_code == 200
        except httpx.TransportError:
            return False


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def _exited(proc: subprocess.Popen[str]) -> str | None:
    """None while `proc` runs, else its exit code and the end of its stderr."""
    if proc.poll() is None:
        return None
    return f"exit {proc.returncode}: {proc.communicate()[1][-2000:]}"


def test_serve_openai_refuses_a_public_address_without_a_token(tmp_path: Path) -> None:
    env = speckit_env({}, SPECKIT_OPENAI_ADDR="0.0.0.0:0", SPECKIT_HOME=str(tmp_path))
    run = run_speckit(["serve", "openai"], env)
    assert run.code == 2
    assert run.stderr.strip().splitlines() == [
        "error: openai: refusing to listen on non-loopback 0.0.0.0:0 without SPECKIT_AUTH_TOKEN; set it, or pass "
        "--insecure to serve unauthenticated"
    ]


def test_serve_with_a_missing_policy_file_is_one_line(tmp_path: Path) -> None:
    run = run_speckit(["serve", "router", "--policy", str(tmp_path / "nope.toml")], speckit_env({}))
    assert run.code == 2 and "Traceback" not in run.stderr
    assert "policy file not found" in run.stderr and len(run.stderr.strip().splitlines()) == 1


async def test_serve_openai_alone_serves_in_front_of_running_services(
    services_factory, sqlite_url, tmp_path: Path
) -> None:
    """`speckit serve openai` as its own process, a client of services elsewhere."""
    svc = await services_factory(["capsule", "inference", "router"], database_url=sqlite_url)

    async def start() -> tuple[subprocess.Popen[str], str]:
        openai_addr = f"127.0.0.1:{pick_port()}"  # a start lost to a taken port: a new one
        env = speckit_env(
            {name: svc.addr(name) for name in ("capsule", "inference", "router")},
            SPECKIT_OPENAI_ADDR=openai_addr,
            SPECKIT_HOME=str(tmp_path),
        )
        proc = await asyncio.to_thread(
            subprocess.Popen,
            [sys.executable, "-m", "speckit_reflex.cli.main", "serve", "openai"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            await wait_ready(
                lambda: _answers(f"http://{openai_addr}/v1/models"),
                lambda: _exited(proc),
                what="speckit serve openai",
            )
        except BaseException:
            _stop(proc)
            raise
        return proc, openai_addr

    proc, openai_addr = await start_with_fresh_ports(start)
    try:
        async with httpx.AsyncClient() as http:
            models = await http.get(f"http://{openai_addr}/v1/models")
        assert models.status_code == 200
        assert [m["id"] for m in models.json()["data"]][:2] == [
            "speckit/auto",
            "qwen2.5-coder-7b-instruct",
        ]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.to_thread(proc.communicate, timeout=60)
    assert proc.returncode == 0, err
