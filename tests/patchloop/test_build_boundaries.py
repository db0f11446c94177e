"""What a caller cannot make PatchLoop do: run a command of its own, open a
workspace outside the server's roots, pass a field the service cannot use, or
get a file from outside the workspace into a prompt.

The gRPC cases run the real PatchLoop service (with Capsule) on port 0 and
real cargo; the prompt case drives the loop core with a recording model.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import grpc
import pytest
from patchloop_support import CRATES, ScriptedInference, kinds, reply, run_all, tree_digest

from speckit_reflex.clients.errors import error_of
from speckit_reflex.clients.patchloop import PatchLoopClient
from speckit_reflex.errors import PermissionDenied
from speckit_reflex.patchloop.roots import WorkspaceRoots
from speckit_reflex.policy import load_policy
from speckit_reflex.policy.model import DEFAULT_PROFILES
from speckit_reflex.v1 import common_pb2, patchloop_pb2

RUN = "/speckit_reflex.v1.PatchLoop/Run"


def clean_crate(dest: Path) -> Path:
    """field_typo with its typo fixed: the build is clean at once."""
    shutil.copytree(CRATES / "field_typo", dest, ignore=shutil.ignore_patterns("target"))
    lib = dest / "src/lib.rs"
    lib.write_text(lib.read_text().replace("self.hieght", "self.height"))
    return dest


def _string_field(number: int, value: str) -> bytes:
    """A length-delimited protobuf field, encoded by hand (numbers below 16, values below 128 bytes)."""
    data = value.encode()
    assert number < 16 and len(data) < 128
    return bytes([number << 3 | 2, len(data)]) + data


@pytest.fixture
async def patchloop(services_factory, tmp_path: Path):
    services = await services_factory(["capsule", "patchloop"])
    return services


async def _raw_run(services, payload: bytes) -> list[patchloop_pb2.RunEvent]:
    call = services.ctx.channel("patchloop").unary_stream(
        RUN, request_serializer=None, response_deserializer=patchloop_pb2.RunEvent.FromString
    )
    return [ev async for ev in call(payload, timeout=120)]


async def test_argv_in_the_old_field_numbers_is_never_run(patchloop, tmp_path: Path):
    """A client built against the old contract sends compile_command (4) and
    verify_command (5) as raw argv: the server ignores them and runs the
    policy's profile."""
    ws = clean_crate(tmp_path / "ws")
    marker = tmp_path / "pwned"
    payload = patchloop_pb2.RunRequest(workspace=str(ws)).SerializeToString()
    for number in (4, 5):
        for arg in ("touch", str(marker)):
            payload += _string_field(number, arg)
    events = await _raw_run(patchloop, payload)
    started = kinds(events, "compile_started")
    assert [(s.profile, tuple(s.command)) for s in started] == [
        ("check", DEFAULT_PROFILES["check"])
    ]
    assert events[-1].result.outcome == patchloop_pb2.OUTCOME_ALREADY_CLEAN
    assert not marker.exists()


async def test_a_named_profile_runs_the_policys_command(patchloop, tmp_path: Path):
    ws = clean_crate(tmp_path / "ws")
    client = PatchLoopClient(patchloop.ctx.channel("patchloop"))
    events, result = await client.run_to_end(str(ws), build_profile="check", verify_profile="test")
    started = kinds(events, "compile_started")
    assert [(s.profile, tuple(s.command), s.verify) for s in started] == [
        ("check", DEFAULT_PROFILES["check"], False),
        ("test", DEFAULT_PROFILES["test"], True),
    ]
    assert result.outcome == patchloop_pb2.OUTCOME_ALREADY_CLEAN


@pytest.mark.parametrize("field", ["build_profile", "verify_profile"])
@pytest.mark.parametrize(
    "name",
    [
        "cargo check",
        "/bin/sh",
        "sh -c 'touch x'",
        "../check",
        "CHECK",
        "check;id",
        "nope",
        "x" * 40,
    ],
)
async def test_a_command_or_unknown_name_as_profile_is_refused(
    patchloop, tmp_path: Path, field: str, name: str
):
    ws = clean_crate(tmp_path / "ws")
    client = PatchLoopClient(patchloop.ctx.channel("patchloop"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.run_to_end(str(ws), **{field: name})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(f"{field}:")


async def test_build_timeout_above_the_policy_cap_is_refused(patchloop, tmp_path: Path):
    ws = clean_crate(tmp_path / "ws")
    client = PatchLoopClient(patchloop.ctx.channel("patchloop"))
    cap = load_policy(None).policy.patchloop.max_build_timeout_s
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.run_to_end(str(ws), build_timeout_s=cap + 1)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("build_timeout_s:")
    _, result = await client.run_to_end(str(ws), build_timeout_s=cap)
    assert result.outcome == patchloop_pb2.OUTCOME_ALREADY_CLEAN


# -- every field of RunRequest and GetRunRequest ---------------------------------

BAD_RUN_FIELDS = [
    ("workspace", {"workspace": ""}),
    ("workspace", {"workspace": "/tmp/a\x00b"}),
    ("workspace", {"workspace": "/" + "a" * 5000}),
    ("max_attempts", {"max_attempts": 51}),
    ("force_mode", {"force_mode": 99}),
    ("force_mode", {"force_mode": common_pb2.ROUTING_MODE_LOCAL}),
    ("session_id", {"session_id": "s" * 3000}),
    ("session_id", {"session_id": "a\x00b"}),
    ("run_id", {"run_id": "r\x00x"}),
    ("run_id", {"run_id": "r" * 129}),
    ("bakeoff_run_id", {"bakeoff_run_id": "\x00"}),
    ("task_id", {"task_id": "t" * 200}),
    ("build_profile", {"build_profile": "check\x00"}),
    ("verify_profile", {"verify_profile": "t" * 5000}),
]


@pytest.mark.parametrize(
    ("field", "values"), BAD_RUN_FIELDS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_RUN_FIELDS)]
)
async def test_each_hostile_run_field_is_refused_naming_it(
    patchloop, tmp_path: Path, field: str, values: dict
):
    ws = clean_crate(tmp_path / "ws")
    stub_call = patchloop.ctx.channel("patchloop").unary_stream(
        RUN,
        request_serializer=patchloop_pb2.RunRequest.SerializeToString,
        response_deserializer=patchloop_pb2.RunEvent.FromString,
    )
    req = patchloop_pb2.RunRequest(workspace=str(ws))
    for k, v in values.items():
        setattr(req, k, v)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        [ev async for ev in stub_call(req, timeout=30)]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert err.value.details().startswith(f"{field}:")
    # The field is data too, for programs: ErrorInfo INVALID_FIELD naming it.
    info = error_of(err.value)
    assert (info.reason, info.metadata) == (common_pb2.ERROR_REASON_INVALID_FIELD, {"field": field})


@pytest.mark.parametrize("run_id", ["", "a\x00b", "r" * 3000])
async def test_get_run_refuses_a_hostile_run_id(patchloop, run_id: str):
    client = PatchLoopClient(patchloop.ctx.channel("patchloop"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.get_run(run_id)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("run_id:")


async def test_the_service_still_serves_after_hostile_requests(patchloop, tmp_path: Path):
    ws = clean_crate(tmp_path / "ws")
    client = PatchLoopClient(patchloop.ctx.channel("patchloop"))
    for bad in ({"session_id": "\x00" * 10}, {"force_mode": 7}, {"build_profile": "rm -rf /"}):
        with pytest.raises(grpc.aio.AioRpcError):
            await client.run_to_end(str(ws), **bad)
    _, result = await client.run_to_end(str(ws))
    assert result.outcome == patchloop_pb2.OUTCOME_ALREADY_CLEAN


# -- workspace roots -------------------------------------------------------------------


@pytest.fixture
async def rooted(services_factory, tmp_path: Path):
    """PatchLoop whose only root is tmp_path/root."""
    (tmp_path / "root").mkdir()
    return await services_factory(["capsule", "patchloop"], workspace_roots=str(tmp_path / "root"))


async def test_a_workspace_outside_the_roots_is_refused(rooted, tmp_path: Path):
    inside = clean_crate(tmp_path / "root" / "crate")
    outside = clean_crate(tmp_path / "elsewhere")
    os.symlink(outside, tmp_path / "root" / "link-out")
    client = PatchLoopClient(rooted.ctx.channel("patchloop"))
    for path in (
        outside,
        tmp_path / "root" / "link-out",
        tmp_path / "root" / "crate" / ".." / ".." / "elsewhere",
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.run_to_end(str(path))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert (
            err.value.details().startswith("workspace:")
            and "SPECKIT_WORKSPACE_ROOTS" in err.value.details()
        )
    _, result = await client.run_to_end(str(inside))
    assert result.outcome == patchloop_pb2.OUTCOME_ALREADY_CLEAN
    settings = await client.build_settings()
    assert list(settings.workspace_roots) == [str((tmp_path / "root").resolve())]


def test_workspace_roots_setting(tmp_path: Path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    roots = WorkspaceRoots.from_setting(f"{a}{os.pathsep}{b}{os.pathsep}", cwd=Path("/"))
    assert roots.roots == (a.resolve(), b.resolve())
    assert roots.admit(str(b / "x" / "y")) == (b / "x" / "y").resolve()
    with pytest.raises(PermissionDenied):
        roots.admit(str(tmp_path / "ab"))  # a sibling sharing a prefix is not under `a`
    assert WorkspaceRoots.from_setting("", cwd=a).roots == (a.resolve(),)
    nowhere = WorkspaceRoots.from_setting("", cwd=Path("/"))
    assert nowhere.roots == ()
    with pytest.raises(PermissionDenied, match="no workspace roots"):
        nowhere.admit(str(a))


# -- symlinks that leave the workspace -------------------------------------------------

CANARY = "SPECKIT-CANARY-7d41e2 host secret"


async def test_a_file_linked_from_outside_never_reaches_a_prompt(crate, make_loop, tmp_path: Path):
    ws = crate("field_typo")
    secret = tmp_path / "host" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text(f"{CANARY}\n")
    os.symlink(secret, ws / "src/secret.rs")
    os.symlink("lib.rs", ws / "src/alias.rs")  # a link inside the workspace keeps working
    lib = ws / "src/lib.rs"
    lib.write_text("mod secret;\n" + lib.read_text())
    before = tree_digest(ws)
    inference = ScriptedInference(
        [reply({"edits": [{"file": "src/lib.rs", "search": "mod secret;\n", "replace": ""}]})]
    )
    loop, _, _, events = make_loop(inference=inference)
    evs, _result = await run_all(loop, workspace=str(ws), max_attempts=1, compiler_fast_path=False)

    assert inference.requests, "the model was never asked: the test proves nothing"
    prompts = "\n".join(m.content for r in inference.requests for m in r.messages)
    assert "secret.rs" in prompts  # rustc did complain about the module...
    assert CANARY.split()[0] not in prompts  # ...without ever reading the host file
    assert all(CANARY.split()[0] not in str(ev) for ev in evs)
    assert all(CANARY.split()[0] not in str(e) for e in events.events)
    assert any("not followed: src/secret.rs" in n for n in kinds(evs, "note"))
    assert tree_digest(ws) == before
    assert secret.read_text() == f"{CANARY}\n"
