"""The test helpers' dead endpoint: refused while held, and no server can take its port."""

from __future__ import annotations

import socket

import pytest

from tests.ports import DeadEndpoint, StartFailed, start_on_free_port


def test_a_dead_endpoint_refuses_connections_and_cannot_be_taken() -> None:
    with DeadEndpoint() as dead:
        with (
            pytest.raises(ConnectionRefusedError),
            socket.create_connection(("127.0.0.1", dead.port), timeout=5),
        ):
            pass
        other = socket.socket()
        try:
            with pytest.raises(
                OSError
            ):  # EADDRINUSE: a later fake server cannot answer for the dead one
                other.bind(("127.0.0.1", dead.port))
        finally:
            other.close()


def test_start_on_free_port_retries_a_failed_start_on_a_new_port() -> None:
    tried: list[int] = []

    def start(port: int) -> int:
        tried.append(port)
        if len(tried) == 1:
            raise StartFailed("child exited")
        return port

    assert start_on_free_port(start) == tried[-1] and len(tried) == 2
    with pytest.raises(StartFailed):
        start_on_free_port(lambda port: (_ for _ in ()).throw(StartFailed("never")), attempts=2)
