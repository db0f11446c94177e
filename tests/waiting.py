"""Waiting in tests for something that happens elsewhere, without a fixed sleep.

A test that waits for a thing it can observe (a counter of a fake server, an
event in Capsule, a decision of the Router) polls it with `eventually` until
it holds: the test goes on the moment it does, so the deadline can be generous
(the default, 30 s, is hundreds of times what these take on a loaded 2-core
machine) without slowing a passing run. A deadline that passes is a failure
naming what was awaited, never a silent fall-through.

Where a test can await the event itself (an `asyncio.Event`, a stream's next
message, `EventSink.flush`), it does that instead.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 30.0


async def eventually(
    probe: Callable[[], T | Awaitable[T]],
    done: Callable[[T], object] = bool,
    *,
    what: str,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    interval_s: float = 0.02,
) -> T:
    """Call `probe()` (awaited if it is a coroutine) until `done(result)` is true;
    return that result. AssertionError naming `what` (and the last result)
    after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = probe()
        value: T = await result if inspect.isawaitable(result) else result  # type: ignore[assignment]
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s; last: {value!r}"[:2000])
        await asyncio.sleep(interval_s)


def eventually_sync(
    probe: Callable[[], T],
    done: Callable[[T], object] = bool,
    *,
    what: str,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    interval_s: float = 0.2,
) -> T:
    """`eventually` for a test without an event loop (child processes, files)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s; last: {value!r}"[:2000])
        time.sleep(interval_s)
