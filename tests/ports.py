"""Ports for tests and benchmarks: a port is never handed back before its owner is gone.

- A server in this process binds port 0 and reports the port it got (the gRPC
  services, `FakeModelServer`): no helper needed.
- A child process that must be told a number (`speckit llm serve --port N`,
  `speckit serve ...`) gets one from `pick_port()`. Between the pick and the
  child's own bind the port is free, and any process on the machine may take it
  (on a loaded CI machine it happens); `start_on_free_port` therefore starts the
  child again on a fresh port when the start raises `StartFailed`.
- An address nothing answers on is a `DeadEndpoint`: a socket bound but not
  listening, held for the test's lifetime. Linux refuses connections to it, and
  no other server can bind the port while it is held. A port freed by a stopped
  server is not dead: the next server started may get it and answer.
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
    """A port free at this instant, for a child process that must be told a number.

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


class DeadEndpoint:
    """An address on which connections are refused, held until `close()`."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind((HOST, 0))  # bound, never listening: connect() gets ECONNREFUSED
        self.port = int(self._sock.getsockname()[1])
        self.addr = f"{HOST}:{self.port}"
        self.base_url = f"http://{self.addr}/v1"

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> DeadEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
