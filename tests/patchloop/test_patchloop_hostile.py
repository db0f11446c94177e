"""Hostile patches: each is rejected with its reason and nothing is written.

Every case runs a whole loop (real cargo build) with a model that returns the
hostile patch, then checks the PatchRejected event's reason, the
PATCH_ATTEMPT event, and that the workspace and a file outside it are
byte-for-byte unchanged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from patchloop_support import ScriptedInference, kinds, reply, run_all, tree_digest

from speckit_reflex.patchloop.patch import (
    PatchBounds,
    PatchRejected,
    parse_patch,
    patch_schema,
    plan_patch,
)
from speckit_reflex.patchloop.workspace import checked_relative
from speckit_reflex.policy import load_policy
from speckit_reflex.v1 import common_pb2, patchloop_pb2


def edit(
    file: str,
    line_start: int = 9,
    line_end: int = 9,
    replacement: str = "        2 * (self.width + self.height)",
) -> dict:
    return {
        "edits": [
            {
                "file": file,
                "line_start": line_start,
                "line_end": line_end,
                "replacement": replacement,
            }
        ]
    }


def hostile_cases(outside: Path) -> dict[str, tuple[object, str]]:
    return {
        "dotdot": (edit("../../outside/victim.rs"), "path_escape"),
        "dotdot_inner": (edit("src/../../outside/victim.rs"), "path_escape"),
        # Short enough for the schema's file bound, so the path check is what rejects it.
        "absolute": (edit("/etc/hostname"), "path_escape"),
        "symlinked_file": (edit("src/escape.rs", 1, 1), "path_escape"),
        "symlinked_dir": (edit("linkdir/victim.rs", 1, 1), "path_escape"),
        "anchor_mismatch": (
            {"edits": [{"file": "src/lib.rs", "search": "self.hight", "replace": "self.height"}]},
            "anchor_mismatch",
        ),
        "anchor_ambiguous": (
            {"edits": [{"file": "src/lib.rs", "search": "self.", "replace": "this."}]},
            "anchor_ambiguous",
        ),
        "missing_file": (edit("src/new_module.rs", 1, 1, "pub fn f() {}"), "file_not_found"),
        "oversized_replacement": (edit("src/lib.rs", 9, 9, "x" * 5000), "edit_too_large"),
        "too_many_edits": ({"edits": [edit("src/lib.rs")["edits"][0]] * 9}, "edit_too_large"),
        "line_range_beyond_file": (edit("src/lib.rs", 90, 95), "line_range"),
        "line_range_reversed": (edit("src/lib.rs", 9, 8), "line_range"),
        "prose_around_json": ("Here is the fix: " + json.dumps(edit("src/lib.rs")), "invalid_json"),
        "truncated_json": ('{"edits": [{"file": "src/lib.rs", "line_st', "invalid_json"),
        "empty": ("", "invalid_json"),
        "wrong_shape": ({"edits": [{"path": "src/lib.rs", "text": "x"}]}, "schema_violation"),
    }


CASES = sorted(hostile_cases(Path("/x")))


@pytest.mark.parametrize("case", CASES)
async def test_hostile_patch_is_rejected_and_nothing_written(
    case, crate, make_loop, tmp_path: Path
):
    ws = crate("field_typo")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.rs").write_text("// must never change\n")
    os.symlink(outside / "victim.rs", ws / "src/escape.rs")
    os.symlink(outside, ws / "linkdir")
    content, reason = hostile_cases(outside)[case]
    before_ws, before_out = tree_digest(ws), tree_digest(outside)

    loop, _, _, events = make_loop(inference=ScriptedInference([reply(content)]))
    evs, result = await run_all(loop, workspace=str(ws), max_attempts=1, apply=True)

    assert [r.reason for r in kinds(evs, "patch_rejected")] == [reason]
    assert kinds(evs, "patch_applied") == []
    assert (
        result.outcome == patchloop_pb2.OUTCOME_GAVE_UP and not result.applied and result.diff == ""
    )
    (attempt,) = events.of_type(common_pb2.EVENT_TYPE_PATCH_ATTEMPT)
    assert attempt.reason == reason and not attempt.success
    assert tree_digest(ws) == before_ws
    assert tree_digest(outside) == before_out


async def test_invalid_reply_from_adapter_is_never_applied(crate, make_loop):
    ws = crate("field_typo")
    before = tree_digest(ws)
    loop, _, _, events = make_loop(
        inference=ScriptedInference([reply(edit("src/lib.rs"), valid=False)])
    )
    evs, _result = await run_all(loop, workspace=str(ws), max_attempts=1, apply=True)
    assert [r.reason for r in kinds(evs, "patch_rejected")] == ["invalid_json"]
    (attempt,) = events.of_type(common_pb2.EVENT_TYPE_PATCH_ATTEMPT)
    assert attempt.json_valid is False and attempt.reason == "invalid_json"
    assert tree_digest(ws) == before


async def test_creating_files_only_when_the_policy_allows(crate, make_loop, tmp_path: Path):
    toml = tmp_path / "policy.toml"
    toml.write_text("[patchloop]\nallow_create_files = true\nmax_tokens = 1024\n")
    ws = crate("field_typo")
    patch = {
        "edits": [
            {
                "file": "src/lib.rs",
                "line_start": 9,
                "line_end": 9,
                "replacement": "        2 * (self.width + self.height)",
            },
            {
                "file": "src/extra.rs",
                "line_start": 1,
                "line_end": 1,
                "replacement": "pub fn extra() {}",
            },
        ]
    }
    loop, *_ = make_loop(inference=ScriptedInference([reply(patch)]), pol=load_policy(toml))
    _, result = await run_all(loop, workspace=str(ws), apply=True)
    assert result.outcome == patchloop_pb2.OUTCOME_FIXED
    assert "+++ b/src/extra.rs" in result.diff
    assert (ws / "src/extra.rs").read_text() == "pub fn extra() {}"


def test_multi_file_patch_is_all_or_nothing(tmp_path: Path):
    (tmp_path / "a.rs").write_text("one\n")
    edits = parse_patch(
        json.dumps(
            {
                "edits": [
                    {"file": "a.rs", "line_start": 1, "line_end": 1, "replacement": "uno"},
                    {"file": "b.rs", "search": "x", "replace": "y"},
                ]
            }
        ),
        patch_schema(PatchBounds.for_max_tokens(2048)),
    )
    with pytest.raises(PatchRejected) as err:
        plan_patch(
            edits,
            lambda n: checked_relative(tmp_path, n)[0],
            lambda r: (tmp_path / r).read_text() if (tmp_path / r).exists() else None,
            False,
        )
    assert err.value.reason == "file_not_found"
    assert (tmp_path / "a.rs").read_text() == "one\n"


@pytest.mark.parametrize(
    "name", ["/etc/passwd", "../x", "a/../../x", "", "a\x00b", "C:/x", "~/x", "a\\..\\x", "."]
)
def test_checked_relative_rejects_escapes(tmp_path: Path, name: str):
    with pytest.raises(PatchRejected) as err:
        checked_relative(tmp_path, name)
    assert err.value.reason == "path_escape"


def test_checked_relative_normalises_inside_paths(tmp_path: Path):
    (tmp_path / "src").mkdir()
    assert checked_relative(tmp_path, "./src//lib.rs")[0] == "src/lib.rs"
    os.symlink("lib.rs", tmp_path / "src/alias.rs")
    assert checked_relative(tmp_path, "src/alias.rs")[0] == "src/lib.rs", (
        "a link inside resolves to its target"
    )


@pytest.mark.parametrize("max_tokens", [128, 256, 384, 512, 1024, 4096])
def test_longest_valid_reply_fits_in_max_tokens(max_tokens: int):
    bounds = PatchBounds.for_max_tokens(max_tokens)
    schema = patch_schema(bounds)
    line = {
        "file": "f" * bounds.file_chars,
        "line_start": 100000,
        "line_end": 100000,
        "replacement": "r" * bounds.replacement_chars,
    }
    search = {
        "file": "f" * bounds.file_chars,
        "search": "s" * bounds.search_chars,
        "replace": "p" * bounds.replace_chars,
    }
    for item in (line, search):
        doc = json.dumps({"edits": [item] * bounds.max_edits}, separators=(",", ":"))
        assert parse_patch(doc, schema)  # valid at the bounds
        # >= 1 character per token, and a quarter of the budget left for whitespace/escapes
        assert len(doc) <= 0.8 * max_tokens or max_tokens < 200
    assert bounds.replacement_chars >= 40 or max_tokens < 200
