"""Ports for tests: a port is never handed back before its owner is gone.

- A server in this process binds port 0 and reports the port it got (the gRPC
  services, `FakeModelServer`): no helper needed.
- A child process that must be told a number gets one from `pick_port()` and
  is started through `start_on_free_port`, which starts it again on a fresh
  port when it loses its port in the window before its bind. Both live in the
  package (`speckit_reflex.clients.ports`), shared with the benchmarks and the
  demo; they are re-exported here so that a test finds every port helper in
  one place.
- A child told several ports at once (`speckit serve all`) is started through
  `start_with_fresh_ports`: its `start()` picks them anew on each try, and
  `wait_ready` turns the child's death before it is ready into `StartFailed`.
- A port the test must own for its whole life is a `HeldPort`: a socket bound
  (with SO_REUSEPORT) but never listening. Connections to it are refused, and
  no other socket can bind it, except another SO_REUSEPORT one that asks for
  that very number: a server of this test started on it (gRPC's `aio.server()`
  binds with SO_REUSEPORT; `asyncio.start_server(..., reuse_port=True)`). When
  that server stops, the port refuses connections again instead of going back
  to the pool, where the next server started anywhere on the machine could get
  it and answer for the stopped one.
- An address nothing answers on is a `DeadEndpoint`: a held port no server is
  started on.

Each is held until `close()` (or the end of a `with` block; the `dead_endpoint`
and `held_port` fixtures of tests/conftest.py close them when the test ends).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Self, TypeVar

from speckit_reflex.clients.ports import HOST, StartFailed, pick_port, start_on_free_port

__all__ = [
    "HOST",
    "DeadEndpoint",
    "HeldPort",
    "StartFailed",
    "listening_ports",
    "pick_port",
    "start_on_free_port",
    "start_with_fresh_ports",
    "wait_ready",
]

T = TypeVar("T")


def listening_ports(pid: int) -> set[int]:
    """TCP ports the process `pid` itself listens on (from /proc): a child told a
    port is ready when it holds that port, not when something on it answers
    (some other process may have taken it in the window)."""
    try:
        inodes = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        tables = [Path(f"/proc/{pid}/net/{t}").read_text() for t in ("tcp", "tcp6")]
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return set()  # the process is gone
    ports = set()
    for table in tables:
        for line in table.splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A = LISTEN
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


async def start_with_fresh_ports(start: Callable[[], Awaitable[T]], attempts: int = 3) -> T:
    """`await start()` (which picks its ports with `pick_port()` each time) again
    while it raises `StartFailed`: the async, several-ports `start_on_free_port`."""
    for attempt in range(attempts):
        try:
            return await start()
        except StartFailed:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


async def wait_ready(
    ready: Callable[[], Awaitable[bool]],
    exited: Callable[[], str | None],
    *,
    what: str,
    timeout_s: float = 60.0,
    interval_s: float = 0.1,
) -> None:
    """Poll `ready()` until it is true. `exited()` is None while the child runs,
    else why it stopped (exit code, last log lines): then `StartFailed`, perhaps
    its port was taken in the window, so that the starter tries fresh ports.
    AssertionError after `timeout_s` (a start takes seconds; the rest is margin
    for a loaded machine)."""
    deadline = time.monotonic() + timeout_s
    while not await ready():
        why = exited()
        if why is not None:
            raise StartFailed(f"{what} exited before it was ready: {why}")
        assert time.monotonic() < deadline, f"{what} not ready within {timeout_s} s"
        await asyncio.sleep(interval_s)


class HeldPort:
    """A port owned until `close()`; connections are refused unless a server of ours serves on it."""

    def __init__(self, port: int = 0) -> None:
        """A fresh port, or `port`: the one a child process just left, taken back
        at once so that no one else can answer on it (OSError if someone did)."""
        self._sock = socket.socket()
        # SO_REUSEPORT lets this test's own servers bind the number too; a bind
        # to port 0 elsewhere is never given a port that is in use.
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if port:
            # The old server's connections may linger in TIME_WAIT; they hold no one's port.
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((HOST, port))  # bound, never listening: connect() gets ECONNREFUSED
        self.port = int(self._sock.getsockname()[1])
        self.addr = f"{HOST}:{self.port}"
        self.base_url = f"http://{self.addr}/v1"

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DeadEndpoint(HeldPort):
    """An address on which connections are refused: a held port no server is started on."""
