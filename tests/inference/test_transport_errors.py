"""Failover reasons from transport errors. The aiohttp transport turns
aiohttp's errors into httpx's coarsely (a refused connection and a
mid-stream disconnect both become ConnectTimeout); the adapter reads the
aiohttp error underneath. Each case goes through the transport's own mapping."""

from __future__ import annotations

import aiohttp
import httpx
import pytest
from httpx_aiohttp.transport import map_aiohttp_exceptions

from speckit_reflex.inference.backends import _transport_failure


def _through_transport(exc: Exception) -> httpx.HTTPError:
    with pytest.raises(httpx.HTTPError) as caught, map_aiohttp_exceptions():
        raise exc
    return caught.value


# A refused connection (ClientConnectorError -> connect_error) needs a real
# connection attempt: test_failure_modes.py's dead primary covers it.
@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (aiohttp.ConnectionTimeoutError("Connection timeout to host"), "connect_timeout"),
        (aiohttp.SocketTimeoutError("Timeout on reading data from socket"), "timeout"),
        (aiohttp.ServerDisconnectedError(), "truncated_stream"),
        (aiohttp.ClientPayloadError("Response payload is not completed"), "truncated_stream"),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), "connection_error"),
    ],
)
def test_reason_comes_from_the_aiohttp_error(error: Exception, reason: str) -> None:
    mapped = _through_transport(error)
    assert _transport_failure(mapped).reason == reason


def test_plain_httpx_errors_keep_their_reasons() -> None:
    assert _transport_failure(httpx.ConnectError("refused")).reason == "connect_error"
    assert _transport_failure(httpx.ReadTimeout("slow")).reason == "timeout"
    assert _transport_failure(httpx.RemoteProtocolError("cut")).reason == "truncated_stream"
