"""`speckit reflex run|status|health|models` against the real four services
(no model needed: the demo crate is fixed by rustc's own suggestion, and the
configured model server is deliberately absent)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from speckit_reflex.bakeoff import copy_tree
from speckit_reflex.cli.demo_stack import render_policy
from speckit_reflex.demo import DEMO_CRATE, DEMO_POLICY
from speckit_reflex.policy import load_policy

from .conftest import run_speckit, speckit_env

SERVICES = ["capsule", "inference", "router", "patchloop"]


@pytest.fixture
async def stack(services_factory, sqlite_url: str, tmp_path: Path, dead_endpoint):  # type: ignore[no-untyped-def]
    """The services with the demo policy, its model server port closed."""
    path = tmp_path / "model_policy.toml"
    path.write_text(render_policy(DEMO_POLICY.read_text(), dead_endpoint().port))
    policy = load_policy(path)
    svc = await services_factory(SERVICES, database_url=sqlite_url, policy=policy)
    return svc, policy, speckit_env({name: svc.addr(name) for name in SERVICES})


async def cli(args: list[str], env: dict[str, str]):  # type: ignore[no-untyped-def]
    return await asyncio.to_thread(run_speckit, args, env, 300)


@pytest.mark.cargo
async def test_run_fixes_the_demo_crate_with_the_compiler_and_applies_it(
    stack, tmp_path: Path
) -> None:
    _, _, env = stack
    crate = tmp_path / "crate"
    copy_tree(DEMO_CRATE, crate)
    run = await cli(["reflex", "run", str(crate), "--apply", "--test", "--json"], env)
    assert run.code == 0, run.stderr
    doc = run.json()
    assert doc["outcome"] == "fixed"
    assert doc["fixed_by"] == "compiler"
    assert doc["applied"] is True
    assert "+    let mut counts" in doc["diff"]
    assert "let mut counts" in (crate / "src" / "lib.rs").read_text()
    # Progress lines went to stderr as the loop ran.
    assert "build 1 error(s)" in run.stderr and "patch from compiler" in run.stderr

    again = await cli(["reflex", "run", str(crate)], env)
    assert again.code == 0
    assert "already_clean" in again.stdout


async def test_run_of_a_missing_folder_fails_on_stderr(stack, tmp_path: Path) -> None:
    _, _, env = stack
    run = await cli(["reflex", "run", str(tmp_path / "nope"), "--json"], env)
    assert run.code == 1
    assert run.stdout == ""
    assert "not a folder" in run.stderr


async def test_status_shows_the_effective_policy_and_its_hash(stack) -> None:
    _, policy, env = stack
    run = await cli(["reflex", "status", "--json"], env)
    assert run.code == 0, run.stderr
    doc = run.json()
    assert doc["sha256"] == policy.sha256
    assert doc["reflex"]["enabled"] is True
    assert doc["reflex"]["model_primary"] == "smollm2-135m-instruct"
    assert [b["name"] for b in doc["reflex"]["backends"]] == ["local"]
    assert doc["thresholds"] == {
        "p95_latency_ms": 2000.0,
        "success_parity_percent": 85.0,
        "json_schema_compliance_percent": 100.0,
    }
    assert doc["capture"]["mode"] == "full_io"
    table = await cli(["reflex", "status"], env)
    assert policy.sha256 in table.stdout


@pytest.mark.cargo
async def test_status_shows_the_build_cache_and_cache_clear_empties_it(
    stack, tmp_path: Path
) -> None:
    _, _, env = stack
    crate = tmp_path / "crate"
    copy_tree(DEMO_CRATE, crate)
    assert (await cli(["reflex", "run", str(crate)], env)).code == 0
    status = await cli(["reflex", "status", "--json"], env)
    assert status.code == 0, status.stderr
    cache = status.json()["build_cache"]
    assert cache["dir"] == str((tmp_path / ".speckit" / "cache" / "targets").resolve())
    assert cache["enabled"] is True and cache["slots"] == 1 and cache["size_bytes"] > 0
    assert cache["dir"] in (await cli(["reflex", "status"], env)).stdout

    cleared = await cli(["reflex", "cache", "clear", "--json"], env)
    assert cleared.code == 0, cleared.stderr
    assert cleared.json()["removed"] == 1 and cleared.json()["freed_bytes"] > 0
    assert (await cli(["reflex", "status", "--json"], env)).json()["build_cache"]["slots"] == 0
    again = await cli(["reflex", "cache", "clear"], env)
    assert "removed 0 build dir(s)" in again.stdout


async def test_health_and_models_report_an_absent_model_server(stack) -> None:
    _, _, env = stack
    health = await cli(["reflex", "health", "--refresh", "--json"], env)
    assert health.code == 0, health.stderr
    doc = health.json()
    local = next(b for b in doc["backends"] if b["backend"] == "local")
    assert local["healthy"] is False and local["reachable"] is False
    assert local["kind"] == "llamacpp" and local["reason"]
    assert doc["healthy"] is False

    models = await cli(["reflex", "models", "--json"], env)
    assert models.code == 0, models.stderr
    listed = models.json()
    assert all(m["backend"] != "local" for m in listed["models"])
    assert "local" in [u["backend"] for u in listed["unreachable"]]


@pytest.mark.llm
async def test_health_and_models_with_the_embedded_model(
    llama_server, services_factory, sqlite_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "model_policy.toml"
    path.write_text(render_policy(DEMO_POLICY.read_text(), llama_server.port))
    svc = await services_factory(
        ["capsule", "inference"], database_url=sqlite_url, policy=load_policy(path)
    )
    env = speckit_env({"inference": svc.addr("inference")})
    models = await cli(["reflex", "models", "--backend", "local", "--json"], env)
    assert models.code == 0, models.stderr
    assert [(m["id"], m["owned_by"]) for m in models.json()["models"]] == [
        ("smollm2-135m-instruct", "llamacpp")
    ]
    health = await cli(["reflex", "health", "--backend", "local", "--refresh", "--json"], env)
    [local] = health.json()["backends"]
    assert local["healthy"] is True and local["generation_ok"] is True, local
