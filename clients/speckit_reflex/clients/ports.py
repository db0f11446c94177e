"""Ports for child processes the caller starts (the demo, benchmarks, tests).

A server started in this process binds port 0 and reports the port it got: it
needs nothing from here. A child process that must be told a number
(`speckit llm serve --port N`, `speckit serve ...` with its address in the
environment) gets one from `pick_port()`. Between the pick and the child's own
bind the port is free, and any process on the machine may take it (on a loaded
CI machine it happens): the child then stops ("port N is already in use", see
`speckit_reflex.runtime.listen`), and `start_on_free_port` starts it again on
a fresh port.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TypeVar

HOST = "127.0.0.1"
T = TypeVar("T")


class StartFailed(RuntimeError):
    """A child process died before it was ready: perhaps its port was taken in the window."""


def pick_port() -> int:
    """A port on 127.0.0.1 free at this instant, for a child process that must be told a number.

    The port is released on return: see the module docstring for the window and
    `start_on_free_port` for the retry that closes it."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def start_on_free_port(start: Callable[[int], T], attempts: int = 3) -> T:
    """`start(port)` on a picked port; again on a new port while it raises `StartFailed`."""
    for attempt in range(attempts):
        try:
            return start(pick_port())
        except StartFailed:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")
