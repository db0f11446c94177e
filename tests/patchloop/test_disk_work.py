"""A run's disk work on its threads: awaited to its end, even through a cancel; a
file read from disk once, then from memory."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from speckit_reflex.patchloop.steps import Disk
from speckit_reflex.patchloop.workspace import Scratch


@pytest.fixture
def disk():
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield Disk(pool)


async def test_the_result_and_the_error_of_the_work_come_back(disk):
    assert await disk.run(lambda a, b: a + b, 2, 3) == 5
    with pytest.raises(ZeroDivisionError):
        await disk.run(lambda: 1 / 0)


async def test_a_cancel_waits_for_the_work_to_end_then_is_raised(disk):
    """The scratch copy is never written by a thread once its run winds up."""
    started, release = threading.Event(), threading.Event()
    log: list[str] = []

    def write() -> None:
        started.set()
        release.wait(timeout=60)
        log.append("written")

    task = asyncio.ensure_future(disk.run(write))
    try:
        await asyncio.to_thread(started.wait, 60)
        task.cancel()
        task.cancel()  # a second cancel changes nothing
        # The work is held by `release`: however long the loop turns, the task waits.
        for _ in range(20):
            await asyncio.sleep(0)
        assert not task.done() and log == []
    finally:
        release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log == ["written"], "the cancel came out only after the write ended"


async def test_read_ahead_reads_a_file_once_and_skips_names_outside_the_copy(disk, tmp_path):
    ws = tmp_path / "ws"
    (ws / "src").mkdir(parents=True)
    (ws / "Cargo.toml").write_text('[package]\nname = "t"\nversion = "0.1.0"\n')
    (ws / "src" / "lib.rs").write_text("pub fn f() {}\n")
    scratch = await asyncio.to_thread(Scratch.open, ws, tmp_path)
    try:
        names = ["src/lib.rs", "src/new.rs", "../outside.rs", "/etc/passwd"]
        assert scratch.unread(names) == ["src/lib.rs", "src/new.rs"]
        await disk.read_ahead(scratch, names)
        assert scratch.unread(names) == []  # in memory now: no more disk reads
        assert scratch.read_text("src/lib.rs") == "pub fn f() {}\n"
        assert scratch.read_text("src/new.rs") is None
    finally:
        await asyncio.to_thread(scratch.close)
