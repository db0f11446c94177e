"""compose/docker-compose.yml against the code, per profile (no container
engine here: this is what keeps the file honest). The second half changes one
side at a time — a served model name, a port, a variable, in the compose file,
in a policy file or in the code's settings — and shows the checks notice."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .compose_checks import (
    CHECKS,
    COMPOSE_DIR,
    PROFILES,
    ROOT,
    MissingVariable,
    Stack,
    check_environment,
    known_env_names,
    load_raw,
    runbook_flags,
)


@pytest.fixture(scope="module")
def known() -> set[str]:
    return known_env_names()


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("check", sorted(CHECKS))
def test_compose_agrees_with_the_code(profile: str, check: str, known: set[str]) -> None:
    st = Stack.load(profile)
    problems = check_environment(st, known) if check == "environment" else CHECKS[check](st)
    assert problems == []


def test_the_token_is_required() -> None:
    with pytest.raises(MissingVariable, match="SPECKIT_AUTH_TOKEN"):
        Stack.load("cpu", env={"SPECKIT_AUTH_TOKEN": ""})


def test_the_settings_introspection_sees_the_runtime_settings(known: set[str]) -> None:
    # Not a hand list: these come from RuntimeSettings' fields and the CLI's
    # direct reads; the check is that introspection found them at all.
    assert {
        "SPECKIT_ROUTER_ADDR",
        "SPECKIT_POLICY",
        "SPECKIT_HOME",
        "SPECKIT_AUTH_TOKEN",
        "SPECKIT_LLM_PORT",
        "SPECKIT_SUITES_DIR",
    } <= known


@pytest.mark.parametrize(
    ("service", "launcher"),
    [("sglang", "sglang.launch_server"), ("vllm", "vllm.entrypoints.openai.api_server")],
)
def test_gpu_servers_run_the_runbooks_flags(service: str, launcher: str) -> None:
    st = Stack.load(service)
    argv = st.argv(st.services[service])
    model = argv[argv.index("--model-path" if service == "sglang" else "--model") + 1]
    from .compose_checks import _flag_values

    ours, runbook = _flag_values(argv), runbook_flags(ROOT / "docs" / "runbook.md", launcher, model)
    # Inside a container the server listens on every interface; it is not
    # published, so only the Inference Adapter on the compose network reaches it.
    assert ours.pop("--host") == ["0.0.0.0"]
    runbook.pop("--host")
    assert ours == runbook


# ---------------------------------------------------------------- one side changed

Mutation = Callable[[dict[str, Any], Path], None]


def _command(doc: dict[str, Any], service: str) -> list[str]:
    return doc["services"][service]["command"]


def _replace_in_command(service: str, old: str, new: str) -> Mutation:
    def mutate(doc: dict[str, Any], _: Path) -> None:
        cmd = _command(doc, service)
        cmd[cmd.index(old)] = new

    return mutate


def _set_env(service: str, var: str, value: str | None, drop: str | None = None) -> Mutation:
    def mutate(doc: dict[str, Any], _: Path) -> None:
        env = doc["services"][service]["environment"]
        if drop:
            env.pop(drop)
        if value is not None:
            env[var] = value

    return mutate


def _edit_policy(profile: str, old: str, new: str) -> Mutation:
    def mutate(_: dict[str, Any], compose_dir: Path) -> None:
        path = compose_dir / "policies" / f"{profile}.toml"
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new))

    return mutate


def _set_ports(service: str, ports: list[str]) -> Mutation:
    def mutate(doc: dict[str, Any], _: Path) -> None:
        doc["services"][service]["ports"] = ports

    return mutate


MUTATIONS: dict[str, tuple[str, str, Mutation, str]] = {
    # name: (profile, check, change, expected words in a problem)
    "served name, compose side (sglang)": (
        "sglang",
        "served_models",
        _replace_in_command("sglang", "gpt-oss-20b", "gpt-oss-20b-mxfp4"),
        "expects",
    ),
    "served name, compose side (llama.cpp alias)": (
        "cpu",
        "served_models",
        _replace_in_command("llm", "smollm2-135m-instruct", "smollm2"),
        "expects",
    ),
    "served name dropped (vLLM would serve its path)": (
        "vllm",
        "served_models",
        lambda d, _: _drop_flag(d, "vllm", "--served-model-name"),
        "openai/gpt-oss-20b",
    ),
    "served name, policy side": (
        "cpu",
        "served_models",
        _edit_policy(
            "cpu", 'models = ["smollm2-135m-instruct"]', 'models = ["smollm2-360m-instruct"]'
        ),
        "expects",
    ),
    "model server port, compose side": (
        "cpu",
        "served_models",
        _replace_in_command("llm", "3009", "3010"),
        "listens on 3010",
    ),
    "model server port, policy side": (
        "vllm",
        "served_models",
        _edit_policy("vllm", "http://vllm:3012/v1", "http://vllm:3013/v1"),
        "port 3013",
    ),
    "listen port, one side": (
        "cpu",
        "addresses",
        _set_env("router", "SPECKIT_ROUTER_ADDR", "0.0.0.0:50061"),
        "50061",
    ),
    "peer address, one side": (
        "cpu",
        "addresses",
        _set_env("patchloop", "SPECKIT_CAPSULE_ADDR", "capsule:50055"),
        "capsule:50055",
    ),
    "published port": (
        "cpu",
        "addresses",
        _set_ports("inference", ["127.0.0.1:50062:50062"]),
        "publishes",
    ),
    "variable renamed in compose": (
        "cpu",
        "environment",
        _set_env("capsule", "SPECKIT_DB_URL", "sqlite:///x", drop="SPECKIT_DATABASE_URL"),
        "SPECKIT_DB_URL",
    ),
    "cloud key not passed to inference": (
        "cpu",
        "environment",
        _set_env("inference", "", None, drop="DEEPSEEK_API_KEY"),
        "DEEPSEEK_API_KEY",
    ),
    "policy not mounted": (
        "sglang",
        "paths",
        _set_env("router", "SPECKIT_POLICY", "/etc/speckit/model_policy.toml"),
        "SPECKIT_POLICY",
    ),
    "reports off the volume": (
        "cpu",
        "paths",
        _set_env("capsule", "SPECKIT_HOME", "/tmp/speckit"),
        "SPECKIT_HOME",
    ),
    "trials scratch outside the workspace": (
        "cpu",
        "paths",
        _set_env("cli", "TMPDIR", "/tmp"),
        "TMPDIR",
    ),
    "workspace roots unset": (
        "cpu",
        "paths",
        _set_env("patchloop", "", None, drop="SPECKIT_WORKSPACE_ROOTS"),
        "under no SPECKIT_WORKSPACE_ROOTS",
    ),
    "workspace root not mounted": (
        "vllm",
        "paths",
        _set_env("patchloop", "SPECKIT_WORKSPACE_ROOTS", "/srv/crates"),
        "is not a mount",
    ),
    "unknown CLI command": (
        "cpu",
        "commands",
        _replace_in_command("migrate", "upgrade", "migrate"),
        "not a valid",
    ),
    "metrics port, service side": (
        "cpu",
        "metrics",
        _set_env("router", "SPECKIT_METRICS_ADDR", "0.0.0.0:9465"),
        "router:9465",
    ),
    "metrics off on one service": (
        "cpu",
        "metrics",
        _set_env("capsule", "", None, drop="SPECKIT_METRICS_ADDR"),
        "capsule: SPECKIT_METRICS_ADDR",
    ),
    "service does not wait for the migration": (
        "cpu",
        "commands",
        lambda d, _: d["services"]["router"]["depends_on"].pop("migrate"),
        "does not wait",
    ),
}


def _drop_flag(doc: dict[str, Any], service: str, flag: str) -> None:
    cmd = _command(doc, service)
    i = cmd.index(flag)
    del cmd[i : i + 2]


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_a_change_on_one_side_is_caught(name: str, tmp_path: Path, known: set[str]) -> None:
    profile, check, mutate, expected = MUTATIONS[name]
    compose_dir = tmp_path / "compose"
    shutil.copytree(COMPOSE_DIR, compose_dir)
    raw = load_raw(compose_dir)
    before = Stack.load(profile, compose_dir, raw=raw)
    assert (
        check_environment(before, known) if check == "environment" else CHECKS[check](before)
    ) == []
    mutate(raw, compose_dir)
    after = Stack.load(profile, compose_dir, raw=raw)
    problems = check_environment(after, known) if check == "environment" else CHECKS[check](after)
    assert any(expected in p for p in problems), problems


def test_a_setting_renamed_in_the_code_is_caught(known: set[str]) -> None:
    # The code side of a variable: as if RuntimeSettings.capsule_addr were renamed.
    problems = check_environment(Stack.load("cpu"), known - {"SPECKIT_CAPSULE_ADDR"})
    assert any("SPECKIT_CAPSULE_ADDR is read by no setting" in p for p in problems), problems
