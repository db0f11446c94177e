"""Run captures in Capsule (real SQLite and PostgreSQL, real gRPC): stored only
under capture.mode = full_io, hostile paths refused, secrets redacted, parts
merged by run id, listed newest first with the fixed runs that were not captured."""

from __future__ import annotations

import time

import grpc
import pytest

from speckit_reflex.clients.errors import error_of
from speckit_reflex.v1 import capsule_pb2, common_pb2
from tests.capsule.capsule_helpers import make_event

KEY = "sk-proj-" + "A1b2C3d4E5f6G7h8I9j0" * 3


def start_part(run_id: str, started_us: int, files: dict[str, str]) -> capsule_pb2.RunCapture:
    c = capsule_pb2.RunCapture(run_id=run_id, build_profile="check", verify_profile="test")
    c.started_at.FromMicroseconds(started_us)
    for path, content in files.items():
        c.files.add(path=path, content=content)
    c.errors.add(code="E0308", message="mismatched types", file="src/lib.rs", line=3, column=5)
    return c


def fix_part(run_id: str) -> capsule_pb2.RunCapture:
    c = capsule_pb2.RunCapture(run_id=run_id, fixed=True, fixed_by="compiler", diff="--- a\n")
    c.fix_files.add(path="src/lib.rs", content="fn f() -> u32 { 1 }\n")
    return c


async def test_capture_is_refused_unless_full_io(start_capsule) -> None:
    _, capsule = await start_capsule({"capture.mode": "hash"})
    for call in (
        capsule.put_run_capture(start_part("r1", 1_000, {"src/lib.rs": "x"})),
        capsule.list_run_captures(),
        capsule.get_run_capture("r1"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "capture.mode is 'hash'" in (err.value.details() or "")
        info = error_of(err.value)
        assert info.reason == common_pb2.ERROR_REASON_CAPTURE_OFF
        assert info.metadata == {"capture_mode": "hash"}


async def test_parts_merge_and_list_newest_first_with_uncaptured_fixed_runs(
    start_capsule,
) -> None:
    _, capsule = await start_capsule({"capture.mode": "full_io"})
    now = time.time_ns() // 1000
    first = start_part("run-a", now - 2_000_000, {"src/lib.rs": f'const K: &str = "{KEY}";\n'})
    reply = await capsule.put_run_capture(first)
    assert reply.has_files and not reply.fixed
    # The end part carries no files: it must not erase the start's.
    reply = await capsule.put_run_capture(fix_part("run-a"))
    assert reply.has_files and reply.fixed
    await capsule.put_run_capture(
        start_part("run-b", now - 1_000_000, {"Cargo.toml": "[package]\n"})
    )
    # A fixed run that ran while capture was off: counted, never listed.
    await capsule.append_events(
        [make_event(common_pb2.EVENT_TYPE_LOOP_RESULT, run_id="run-uncaptured", success=True)]
    )
    listed, not_captured = await capsule.all_run_captures()
    assert [c.run_id for c in listed] == ["run-b", "run-a"]
    assert not listed[0].files, "lists carry no files"
    assert not_captured == 1
    fixed, _ = await capsule.all_run_captures(fixed_only=True)
    assert [c.run_id for c in fixed] == ["run-a"]
    got = await capsule.get_run_capture("run-a")
    assert got.fixed and got.fixed_by == "compiler"
    assert [f.path for f in got.files] == ["src/lib.rs"]
    assert KEY not in got.files[0].content and "REDACTED" in got.files[0].content
    assert got.fix_files[0].content == "fn f() -> u32 { 1 }\n"
    assert got.errors[0].code == "E0308" and got.verify_profile == "test"


@pytest.mark.parametrize(
    "path",
    [
        "../outside.rs",
        "/etc/passwd",
        "src/../../x",
        "a\\b",
        "",
        "src//lib.rs",
        "./x",
        # No file system names such a file (255 bytes a name): CheckPatch
        # could not lay it out and answered INTERNAL, failing every harvest.
        "src/" + "a" * 256 + ".rs",
        "src/" + "é" * 128,
        "/".join(["d"] * 2049),
    ],
)
async def test_hostile_paths_are_refused(start_capsule, path: str) -> None:
    _, capsule = await start_capsule({"capture.mode": "full_io"})
    bad = capsule_pb2.RunCapture(run_id="hostile")
    bad.files.add(path=path, content="x")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await capsule.put_run_capture(bad)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_of(err.value).metadata["field"] == "files[0].path"


async def test_unknown_run_is_not_found(start_capsule) -> None:
    _, capsule = await start_capsule({"capture.mode": "full_io"})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await capsule.get_run_capture("nope")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("code", ["../../../escaped", "E0308/../../x", "E 0308", "E0308\n"])
async def test_error_codes_that_are_not_codes_are_refused(start_capsule, code: str) -> None:
    """A captured error code names a harvested task's folder (h_<code>_<digest>):
    one with a path in it would make `harvest` write outside --out."""
    _, capsule = await start_capsule({"capture.mode": "full_io"})
    bad = start_part("hostile-code", 1_000, {"src/lib.rs": "x"})
    bad.errors.add(code=code, message="m", file="src/lib.rs", line=1, column=1)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await capsule.put_run_capture(bad)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_of(err.value)
    assert info.reason == common_pb2.ERROR_REASON_INVALID_FIELD
    assert info.metadata["field"] == "errors[1].code"
    # Codes rustc, lints and clippy use are stored.
    good = start_part("good-code", 1_000, {"src/lib.rs": "x"})
    good.errors.add(code="clippy::needless_return", message="m", file="src/lib.rs")
    good.errors.add(code="unused-variables", message="m", file="src/lib.rs")
    assert (await capsule.put_run_capture(good)).has_files


async def test_a_capture_always_fits_a_reply_and_lists_page_by_size(start_capsule) -> None:
    """Parts are separate messages, each under the 16 MiB limit: merged, a
    start part and an end part could make a capture no GetRunCapture can
    send, and a page of 200 records with large diffs a list no call can
    send, failing every harvest of the window. The end part that would not
    fit is refused naming its field; lists are cut by size, not only count."""
    _, capsule = await start_capsule({"capture.mode": "full_io"})
    now = time.time_ns() // 1000
    body = "// " + "x" * 2_999_997 + "\n"  # 3 MB of source per file
    big = {f"src/f{i}.rs": body for i in range(3)}
    await capsule.put_run_capture(start_part("huge", now - 10_000_000, big))
    end = capsule_pb2.RunCapture(run_id="huge", fixed=True, fixed_by="reflex")
    for i in range(3):
        end.fix_files.add(path=f"src/g{i}.rs", content=body)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await capsule.put_run_capture(end)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_of(err.value).metadata["field"] == "fix_files"
    got = await capsule.get_run_capture("huge")
    assert len(got.files) == 3 and not got.fixed

    # Records with large diffs (no files listed): 6 of them exceed one reply.
    for i in range(6):
        await capsule.put_run_capture(start_part(f"d{i}", now - i, {"src/lib.rs": "x"}))
        fix = fix_part(f"d{i}")
        fix.diff = body
        await capsule.put_run_capture(fix)
    listed, _ = await capsule.all_run_captures(fixed_only=True)
    assert sorted(c.run_id for c in listed) == [f"d{i}" for i in range(6)]
    assert all(len(c.diff) == len(body) for c in listed)
    # With files, few captures are read for a page (each may be near a reply's size).
    page = await capsule.list_run_captures(include_files=True, page_size=200)
    assert 1 <= len(page.captures) <= 2 and page.next_page_token
    assert all(c.files for c in page.captures)


async def test_a_secret_in_a_path_or_an_error_location_is_not_stored(start_capsule) -> None:
    """Contents are redacted; a path is a key of the capture and a file name
    in the harvested suite, so one holding a credential is refused (naming the
    field) rather than stored or rewritten; an error's file is redacted."""
    _, capsule = await start_capsule({"capture.mode": "full_io"})
    token = "ghp_" + "a1B2" * 9
    for field, capture in (
        ("files[1].path", start_part("p1", 1_000, {"src/lib.rs": "x", f"src/{token}.rs": "y"})),
        ("fix_files[0].path", capsule_pb2.RunCapture(run_id="p2", fixed=True, fixed_by="reflex")),
    ):
        if field.startswith("fix_files"):
            capture.fix_files.add(path=f"{token}/lib.rs", content="x")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await capsule.put_run_capture(capture)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_of(err.value).metadata["field"] == field
        assert token not in (err.value.details() or "")
    located = start_part("p3", 1_000, {"src/lib.rs": "x"})
    located.errors.add(code="E0432", message="m", file=f"/home/u/.cargo/git/{token}/lib.rs")
    await capsule.put_run_capture(located)
    got = await capsule.get_run_capture("p3")
    assert token not in got.errors[1].file and "REDACTED" in got.errors[1].file
