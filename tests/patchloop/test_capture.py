"""The workspace snapshot of capture.mode = full_io (real files): text files
only, build output and VCS folders left out, symlinks never followed (not even
ones pointing inside), secrets redacted, nothing at all over the size limit."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

from speckit_reflex.patchloop.capture import snapshot_workspace

KEY = "sk-proj-" + "A1b2C3d4E5f6G7h8I9j0" * 3


def make_workspace(root: Path, outside: Path) -> None:
    (root / "src").mkdir(parents=True)
    (root / "Cargo.toml").write_text('[package]\nname = "x"\n')
    (root / "src" / "lib.rs").write_text(f'const KEY: &str = "{KEY}";\n')
    (root / "target" / "debug").mkdir(parents=True)
    (root / "target" / "debug" / "out.rs").write_text("built\n")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref\n")
    (root / "blob.bin").write_bytes(b"\x00\x01\x02")
    outside.mkdir()
    (outside / "secret.rs").write_text("host file\n")
    os.symlink(outside / "secret.rs", root / "src" / "leak.rs")
    os.symlink(outside, root / "linked_dir")
    os.symlink(root / "src" / "lib.rs", root / "inside_link.rs")


def test_snapshot_keeps_text_files_redacted_and_never_follows_links(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    make_workspace(root, tmp_path / "outside")
    snap = snapshot_workspace(root, 1_000_000)
    assert snap.skipped == ""
    assert sorted(snap.files) == ["Cargo.toml", "src/lib.rs"]
    assert KEY not in snap.files["src/lib.rs"] and "REDACTED" in snap.files["src/lib.rs"]
    assert "blob.bin" in snap.left_out
    assert {"src/leak.rs", "inside_link.rs"} <= set(snap.left_out)
    assert not any("host file" in text for text in snap.files.values())


def test_snapshot_over_the_limit_is_skipped_with_why(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    make_workspace(root, tmp_path / "outside")
    snap = snapshot_workspace(root, 20)
    assert snap.files == {}
    assert "capture.max_workspace_bytes (20)" in snap.skipped


def test_a_huge_file_is_not_read_whole_to_find_it_over_the_limit(tmp_path: Path) -> None:
    """A build script can leave a huge file in the scratch copy before the
    snapshot: at most one byte over the remaining budget is read (a 256 MiB
    sparse file costs no disk; read whole it would cost 256 MiB of memory)."""
    root = tmp_path / "ws"
    root.mkdir()
    with open(root / "huge.rs", "wb") as f:
        f.write(b"// " + b"a" * 8192)
        f.truncate(256 * 1024 * 1024)
    tracemalloc.start()
    try:
        snap = snapshot_workspace(root, 4096)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert snap.files == {} and "max_workspace_bytes (4096)" in snap.skipped
    # Margin: a read of the budget plus the walk's bookkeeping stays far below 1 MiB.
    assert peak < 1024 * 1024, peak


def test_a_name_that_is_not_utf8_is_left_out(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    (root / "src").mkdir(parents=True)
    (root / "src" / "lib.rs").write_text("pub fn f() {}\n")
    with open(os.path.join(os.fsencode(root), b"n\xff.rs"), "wb") as f:
        f.write(b"text\n")
    os.mkdir(os.path.join(os.fsencode(root), b"d\xfe"))
    with open(os.path.join(os.fsencode(root), b"d\xfe", b"in.rs"), "wb") as f:
        f.write(b"text\n")
    snap = snapshot_workspace(root, 1_000_000)
    assert list(snap.files) == ["src/lib.rs"]
    assert snap.left_out == ("n\\udcff.rs",)
