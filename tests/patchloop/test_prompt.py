"""The patch prompt describes the reply format and shows no sample to copy."""

from __future__ import annotations

import json

from speckit_reflex.patchloop.patch import PatchBounds
from speckit_reflex.patchloop.prompt import build_messages

EXCERPTS = 'FILE src/main.rs\n   1 | fn main() {\n   2 |     let x: u32 = "1";\n   3 | }\n'


def _objects(text: str) -> list[object]:
    decoder, found = json.JSONDecoder(), []
    for i, ch in enumerate(text):
        if ch == "{":
            try:
                found.append(decoder.raw_decode(text[i:])[0])
            except ValueError:
                pass
    return found


def test_no_sample_object_to_copy_and_the_real_file_named_first():
    system, user = build_messages(
        PatchBounds.for_max_tokens(384), EXCERPTS, "error[E0308]: mismatched types", []
    )
    assert _objects(system["content"]) == [] and _objects(user["content"]) == []
    assert "src/lib.rs" not in system["content"] + user["content"]
    assert user["content"].startswith("The errors are in src/main.rs: edit that file.\n")
    for key in (
        '"edits"',
        '"file"',
        '"line_start"',
        '"line_end"',
        '"replacement"',
        '"search"',
        '"replace"',
    ):
        assert key in system["content"]
