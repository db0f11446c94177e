"""The error signature harvest deduplicates by: error codes and the normalised
primary span (its file and line text, not its line number)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from speckit_reflex.bakeoff.harvest import deduplicate, error_signature, write_suite
from speckit_reflex.bakeoff.suite import SuiteError, load_suite
from speckit_reflex.v1 import capsule_pb2

BODY = "pub fn count(v: &[u8]) -> u32 {\n    v.len()\n}\n"


def capture(
    run_id: str, started_us: int, prefix: str, code: str = "E0308"
) -> capsule_pb2.RunCapture:
    c = capsule_pb2.RunCapture(run_id=run_id)
    c.started_at.FromMicroseconds(started_us)
    c.files.add(path="src/lib.rs", content=prefix + BODY)
    line = prefix.count("\n") + 2
    c.errors.add(code=code, message="mismatched types", file="src/lib.rs", line=line, column=5)
    return c


def test_a_shifted_line_is_the_same_signature_other_code_is_not() -> None:
    a = capture("a", 1, "")
    shifted = capture("b", 2, "// a comment\n\n")
    other = capture("c", 3, "", code="E0277")
    assert error_signature(a) == error_signature(shifted)
    assert error_signature(a).span == "src/lib.rs: v.len()"
    assert error_signature(a) != error_signature(other)


def test_newest_of_a_signature_wins_whatever_the_order_given() -> None:
    old, new, lone = capture("old", 1, ""), capture("new", 5, "\n"), capture("x", 3, "", "E0061")
    kept = deduplicate([old, lone, new])
    assert [(k.capture.run_id, k.replaces) for k in kept] == [("new", ["old"]), ("x", [])]


def test_a_task_folder_stays_under_out_whatever_the_captured_code(tmp_path: Path) -> None:
    """The task id is built from a captured error code: Capsule refuses codes
    that are not codes, and the harvest keeps only safe characters of one
    anyway (a suite written by an older Capsule's data, or another store)."""
    hostile = capture("r", 1, "", code="../../../../escaped")
    hostile.files.add(path="Cargo.toml", content="[package]\n")
    hostile.fix_files.add(path="src/lib.rs", content="fixed\n")
    [task] = deduplicate([hostile])
    assert re.fullmatch(r"h_[a-z0-9_]+_[0-9a-f]{12}", task.id), task.id
    out = tmp_path / "deep" / "er" / "out"
    write_suite(out, "out", [task], {"tasks": []})
    written = {p for p in tmp_path.rglob("*") if p.is_file()}
    assert written and all(out in p.parents for p in written), sorted(map(str, written))
    assert load_suite(out).tasks[0].crate_dir.joinpath("src/lib.rs").read_text() == BODY


def test_a_suite_with_a_task_id_that_climbs_out_is_refused(tmp_path: Path) -> None:
    """`reflex trials --suite-dir DIR` on a folder someone else wrote: a task id
    is a folder name under tasks/, never a path."""
    (tmp_path / "elsewhere" / "crate").mkdir(parents=True)
    (tmp_path / "elsewhere" / "crate" / "Cargo.toml").write_text("[package]\n")
    suite = tmp_path / "suite"
    (suite / "tasks").mkdir(parents=True)
    (suite / "manifest.toml").write_text(
        '[suite]\nname = "s"\n[[task]]\nid = "../../elsewhere"\n'
        'category = "misc"\ndifficulty = "easy"\n'
    )
    with pytest.raises(SuiteError, match=re.escape("task #1: id '../../elsewhere'")):
        load_suite(suite)


def _suite_with_task(root: Path) -> Path:
    suite = root / "suite"
    crate = suite / "tasks" / "t1" / "crate"
    (crate / "src").mkdir(parents=True)
    (crate / "Cargo.toml").write_text('[package]\nname = "t1"\n')
    (suite / "manifest.toml").write_text(
        '[suite]\nname = "s"\n[[task]]\nid = "t1"\ncategory = "misc"\ndifficulty = "easy"\n'
    )
    return suite


@pytest.mark.parametrize("where", ["crate/src/lib.rs", "fix/src/lib.rs", "crate/src", "fix"])
def test_a_suite_whose_task_holds_a_symlink_is_refused(tmp_path: Path, where: str) -> None:
    """A suite folder may come from someone else: a link in a task would copy
    a host file (read as the user running trials) into the crate PatchLoop
    builds and shows to a model. Harvest never writes links."""
    host = tmp_path / "host"
    (host / "dir").mkdir(parents=True)
    (host / "secret.txt").write_text("id_rsa of the user running trials\n")
    suite = _suite_with_task(tmp_path)
    link = suite / "tasks" / "t1" / where
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_dir():
        link.rmdir()
    link.symlink_to(host / ("dir" if where in ("crate/src", "fix") else "secret.txt"))
    with pytest.raises(SuiteError, match=re.escape(f"tasks/t1/{where}: a symbolic link")):
        load_suite(suite)
    os.unlink(link)
    assert load_suite(suite).tasks[0].id == "t1"


def test_a_captured_message_with_control_characters_keeps_the_manifest_valid(
    tmp_path: Path,
) -> None:
    """A task's description is the first error's message (rustc quotes the
    source): TOML forbids a raw DEL, which JSON's escaping leaves as it is."""
    c = capture("r", 1, "")
    c.errors[0].message = "found `\x7f\x1b[31m` here\u2028"
    c.files.add(path="Cargo.toml", content="[package]\n")
    c.fix_files.add(path="src/lib.rs", content="fixed\n")
    out = tmp_path / "out"
    write_suite(out, "out", deduplicate([c]), {"tasks": []})
    (task,) = load_suite(out).tasks
    assert task.description == "E0308: found `\x7f\x1b[31m` here"
