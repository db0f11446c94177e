"""The error signature harvest deduplicates by: error codes and the normalised
primary span (its file and line text, not its line number)."""

from __future__ import annotations

from speckit_reflex.bakeoff.harvest import deduplicate, error_signature
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
