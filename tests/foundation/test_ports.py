"""The test helpers' held ports: refused while nothing of ours serves on them,
never taken by anyone else, and dead again once our server on one stops."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest
from grpc import aio

from tests.ports import (
    DeadEndpoint,
    HeldPort,
    StartFailed,
    listening_ports,
    start_on_free_port,
)


def _refused(port: int) -> None:
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", port), timeout=5),
    ):
        pass


def _cannot_bind(port: int) -> None:
    other = socket.socket()
    try:
        with pytest.raises(OSError):  # EADDRINUSE: a later server cannot answer for ours
            other.bind(("127.0.0.1", port))
    finally:
        other.close()


def test_a_dead_endpoint_refuses_connections_and_cannot_be_taken() -> None:
    with DeadEndpoint() as dead:
        _refused(dead.port)
        _cannot_bind(dead.port)


async def test_a_held_port_is_dead_again_after_our_server_on_it_stops() -> None:
    with HeldPort() as held:
        server = await asyncio.start_server(
            lambda r, w: w.close(), "127.0.0.1", held.port, reuse_port=True
        )
        _, writer = await asyncio.open_connection("127.0.0.1", held.port)  # ours answers
        writer.close()
        server.close()
        await server.wait_closed()
        _refused(held.port)
        _cannot_bind(held.port)
        # gRPC's servers bind with SO_REUSEPORT too: a peer can come back on the same port.
        grpc_server = aio.server()
        assert grpc_server.add_insecure_port(held.addr) == held.port
        await grpc_server.start()
        await grpc_server.stop(0)
        _refused(held.port)


async def test_a_port_a_server_just_left_can_be_held_again() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await reader.read()  # the server closed first: its side lingers in TIME_WAIT
    writer.close()
    server.close()
    await server.wait_closed()
    with HeldPort(port) as held:
        assert held.port == port
        _refused(port)
        _cannot_bind(port)


async def test_listening_ports_are_the_process_own_listeners() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with HeldPort() as held:  # bound, not listening
            ours = listening_ports(os.getpid())
            assert port in ours and held.port not in ours
    finally:
        server.close()
        await server.wait_closed()
    assert port not in listening_ports(os.getpid())


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
