"""What a newcomer meets in the first hour of the CLI: the version, shell
completion, one-line errors instead of tracebacks, and text that is never
cropped."""

from __future__ import annotations

import asyncio
import io
import socket
import subprocess
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest
from rich.console import Console

from speckit_reflex.cli import output
from speckit_reflex.cli.demo_stack import render_policy
from speckit_reflex.demo import DEMO_POLICY
from speckit_reflex.policy import load_policy
from tests.bakeoff.conftest import CliRun, run_speckit, speckit_env


def one_line_error(run: CliRun) -> str:
    """The run failed with exactly one `error:` line and no traceback."""
    assert run.code != 0
    assert "Traceback" not in run.stderr
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    return lines[0]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port with a listener on it for the test's duration."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_version_is_the_installed_package_version() -> None:
    run = run_speckit(["--version"], speckit_env({}))
    assert run.code == 0
    assert run.stdout.strip() == f"speckit-reflex {version('speckit-reflex')}"


def _complete(script: str, words: list[str]) -> list[str]:
    """What bash offers for `words` (the last one being typed) with `script` loaded."""
    quoted = " ".join(f"'{w}'" for w in words)
    probe = f'{script}\nCOMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; _speckit_complete; echo "${{COMPREPLY[@]}}"'
    proc = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_bash_completion_offers_commands_subcommands_and_choices() -> None:
    run = run_speckit(["completion", "bash"], speckit_env({}))
    assert run.code == 0, run.stderr
    script = run.stdout
    assert set(_complete(script, ["speckit", ""])) >= {
        "serve",
        "reflex",
        "db",
        "llm",
        "demo",
        "completion",
    }
    assert _complete(script, ["speckit", "reflex", "he"]) == ["health"]
    assert _complete(script, ["speckit", "serve", "--log-format", ""]) == ["text", "json"]
    # Options of the command typed so far, not of the top level.
    assert "--revision" in _complete(script, ["speckit", "db", "upgrade", "--"])
    assert "--revision" not in _complete(script, ["speckit", "db", "current", "--"])


def test_zsh_completion_loads_the_bash_function_through_bashcompinit() -> None:
    run = run_speckit(["completion", "zsh"], speckit_env({}))
    assert run.code == 0
    assert (
        "bashcompinit" in run.stdout
        and "complete -o default -F _speckit_complete speckit" in run.stdout
    )
    assert subprocess.run(["bash", "-n"], input=run.stdout, text=True).returncode == 0


def test_serve_on_a_taken_port_names_the_port(taken_port: int, tmp_path: Path) -> None:
    env = speckit_env({"router": f"127.0.0.1:{taken_port}"}, SPECKIT_HOME=str(tmp_path))
    line = one_line_error(run_speckit(["serve", "router"], env))
    assert f"port {taken_port} is already in use" in line and line.startswith("error: router:")


def test_llm_serve_on_a_taken_port_names_the_port(taken_port: int) -> None:
    line = one_line_error(run_speckit(["llm", "serve", "--port", str(taken_port)], speckit_env({})))
    assert f"llm serve: port {taken_port} is already in use" in line


@pytest.mark.parametrize("scheme", ["postgres", "postgresql+psycopg2"])
@pytest.mark.parametrize("command", [["serve", "capsule"], ["db", "current"]])
def test_a_postgres_url_without_the_psycopg_driver_says_which_to_use(
    scheme: str, command: list[str], tmp_path: Path
) -> None:
    env = speckit_env(
        {"capsule": "127.0.0.1:0"},
        SPECKIT_HOME=str(tmp_path),
        SPECKIT_DATABASE_URL=f"{scheme}://me:s3cret@127.0.0.1:5432/speckit",
    )
    line = one_line_error(run_speckit(command, env))
    assert f"{scheme}:// is not supported; use postgresql+psycopg://" in line
    assert "s3cret" not in line


@pytest.mark.postgres
def test_a_bare_postgresql_url_uses_psycopg_3(postgres_url: str, tmp_path: Path) -> None:
    bare = postgres_url.replace("postgresql+psycopg://", "postgresql://", 1)
    run = run_speckit(["db", "upgrade", "--json"], speckit_env({}, SPECKIT_DATABASE_URL=bare))
    assert run.code == 0, run.stderr
    assert run.json()["up_to_date"] is True


async def test_a_service_of_the_wrong_kind_is_named_as_such(
    services_factory, sqlite_url: str
) -> None:
    svc = await services_factory(["capsule"], database_url=sqlite_url)
    capsule = svc.addr("capsule")
    env = speckit_env({"router": capsule, "inference": capsule})
    status = await asyncio.to_thread(run_speckit, ["reflex", "status"], env)
    assert one_line_error(status).startswith(f"error: {capsule} is not a Router ")
    health = await asyncio.to_thread(run_speckit, ["reflex", "health"], env)
    assert one_line_error(health).startswith(f"error: {capsule} is not an Inference Adapter ")


async def test_health_prints_the_whole_reason_into_a_pipe(
    services_factory, sqlite_url: str, tmp_path: Path, dead_endpoint
) -> None:
    path = tmp_path / "model_policy.toml"
    path.write_text(render_policy(DEMO_POLICY.read_text(), dead_endpoint().port))
    svc = await services_factory(["inference"], database_url=sqlite_url, policy=load_policy(path))
    env = speckit_env({"inference": svc.addr("inference")})
    del env["COLUMNS"]  # as in a plain pipe: no terminal, no width
    as_json = await asyncio.to_thread(run_speckit, ["reflex", "health", "--json"], env)
    reason = as_json.json()["backends"][0]["reason"]
    assert len(reason) > 40, reason
    run = await asyncio.to_thread(run_speckit, ["reflex", "health"], env)
    assert run.code == 0, run.stderr
    assert reason in run.stdout, run.stdout


def test_a_diff_is_printed_verbatim_without_a_terminal_and_wrapped_on_one(
    monkeypatch, capsys
) -> None:
    diff = (
        "--- a/src/lib.rs\n+++ b/src/lib.rs\n@@ -1 +1 @@\n-" + "x" * 300 + "\n+" + "y" * 300 + "\n"
    )
    output.print_diff(diff)
    assert capsys.readouterr().out == diff
    buf = io.StringIO()
    monkeypatch.setattr(
        output, "stdout", Console(file=buf, force_terminal=True, width=60, color_system=None)
    )
    output.print_diff(diff)
    shown = buf.getvalue()
    assert max(len(line) for line in shown.splitlines()) <= 60
    assert shown.replace("\n", "").count("y") == 300  # wrapped, nothing cut


def test_a_table_never_crops_without_a_terminal() -> None:
    long = "health probe failed: " + "very long reason " * 20
    assert output.console().width >= len(long)  # pytest's stdout is not a terminal
    buf = io.StringIO()
    original = output.stdout
    try:
        output.stdout = Console(file=buf, width=output._UNBOUNDED_WIDTH)
        output.table("t", ["backend", "reason"], [["local", long]])
    finally:
        output.stdout = original
    assert long.strip() in buf.getvalue()
