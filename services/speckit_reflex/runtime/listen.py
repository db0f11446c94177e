"""Whether a listen address can be bound, asked before a server binds it.

gRPC's C core and llama.cpp only say "failed to bind" (after a log line of
their own, or a traceback); a plain socket tells which port is taken, so
`serve` and `llm serve` can stop with one line naming it.
"""

from __future__ import annotations

import errno
import socket


class AddressInUse(OSError):
    """The port of a listen address is taken by another process."""


def split_address(addr: str) -> tuple[str, int]:
    """("127.0.0.1", 50051) from "127.0.0.1:50051"; "[::]:80" gives ("::", 80)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{addr!r} is not host:port")
    return host.strip("[]") or "0.0.0.0", int(port)


def check_listen_address(addr: str, what: str = "") -> None:
    """Raise AddressInUse naming the port when something already listens on it.

    Port 0 (any free port) always passes; other bind errors (an address not
    of this host, say) are left to the server to report.
    """
    host, port = split_address(addr)
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return
    for family, kind, proto, _name, sockaddr in infos:
        with socket.socket(family, kind, proto) as s:
            # As the servers do: a port whose old connections linger in
            # TIME_WAIT is free; one with a listener is not.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    who = f"{what}: " if what else ""
                    raise AddressInUse(
                        errno.EADDRINUSE,
                        f"{who}port {port} is already in use ({addr}); stop what listens there "
                        "or choose another address",
                    ) from None
