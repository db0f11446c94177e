"""Channels to speckit-reflex services: address, TLS and bearer token in one place."""

from __future__ import annotations

import os
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias, TypeVar

import grpc
from grpc import aio

from speckit_reflex.contract import DEFAULT_ADDRS

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
# The requests of a client-streaming call, as grpc.aio takes them.
_Requests: TypeAlias = AsyncIterable[_Req] | Iterable[_Req]


@dataclass(frozen=True)
class ChannelConfig:
    """How to reach one service. `from_env` reads the same SPECKIT_* names
    the servers use."""

    address: str
    token: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    max_message_bytes: int = 16 * 1024 * 1024

    @classmethod
    def from_env(cls, service: str, environ: dict[str, str] | None = None) -> ChannelConfig:
        env = dict(os.environ) if environ is None else environ
        return cls(
            address=env.get(f"SPECKIT_{service.upper()}_ADDR", DEFAULT_ADDRS[service]),
            token=env.get("SPECKIT_AUTH_TOKEN", ""),
            tls_ca=env.get("SPECKIT_TLS_CA", ""),
            tls_cert=env.get("SPECKIT_TLS_CLIENT_CERT", ""),
            tls_key=env.get("SPECKIT_TLS_CLIENT_KEY", ""),
        )


class _BearerAuth(grpc.AuthMetadataPlugin):
    def __init__(self, token: str):
        self._token = token

    def __call__(
        self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback
    ) -> None:
        callback((("authorization", f"Bearer {self._token}"),), None)


class _Bearer:
    """Adds the token on plaintext channels (call credentials need TLS)."""

    def __init__(self, token: str):
        self._md = ("authorization", f"Bearer {token}")

    def _details(self, d: aio.ClientCallDetails) -> aio.ClientCallDetails:
        md = aio.Metadata(*(tuple(d.metadata) if d.metadata else ()))
        md.add(*self._md)
        return aio.ClientCallDetails(d.method, d.timeout, md, d.credentials, d.wait_for_ready)


# grpc.aio files each interceptor under the FIRST call kind it subclasses, so
# one class serving several kinds reaches only unary-unary calls: streaming
# RPCs then go out without the token. One class per call kind.
class _BearerUnaryUnary(_Bearer, aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self,
        continuation: Callable[
            [aio.ClientCallDetails, _Req], Awaitable[aio.UnaryUnaryCall[_Req, _Resp]]
        ],
        client_call_details: aio.ClientCallDetails,
        request: _Req,
    ) -> aio.UnaryUnaryCall[_Req, _Resp]:
        return await continuation(self._details(client_call_details), request)


class _BearerUnaryStream(_Bearer, aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self,
        continuation: Callable[
            [aio.ClientCallDetails, _Req], Awaitable[aio.UnaryStreamCall[_Req, _Resp]]
        ],
        client_call_details: aio.ClientCallDetails,
        request: _Req,
    ) -> aio.UnaryStreamCall[_Req, _Resp]:
        return await continuation(self._details(client_call_details), request)


class _BearerStreamUnary(_Bearer, aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self,
        continuation: Callable[
            [aio.ClientCallDetails, _Requests[_Req]], Awaitable[aio.StreamUnaryCall[_Req, _Resp]]
        ],
        client_call_details: aio.ClientCallDetails,
        request_iterator: _Requests[_Req],
    ) -> aio.StreamUnaryCall[_Req, _Resp]:
        return await continuation(self._details(client_call_details), request_iterator)


class _BearerStreamStream(_Bearer, aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self,
        continuation: Callable[
            [aio.ClientCallDetails, _Requests[_Req]], Awaitable[aio.StreamStreamCall[_Req, _Resp]]
        ],
        client_call_details: aio.ClientCallDetails,
        request_iterator: _Requests[_Req],
    ) -> aio.StreamStreamCall[_Req, _Resp]:
        return await continuation(self._details(client_call_details), request_iterator)


def bearer_interceptors(token: str) -> list[aio.ClientInterceptor]:
    """Client interceptors that send `authorization: Bearer <token>` on every call kind."""
    return [
        cls(token)
        for cls in (_BearerUnaryUnary, _BearerUnaryStream, _BearerStreamUnary, _BearerStreamStream)
    ]


def open_channel(
    cfg: ChannelConfig, interceptors: Sequence[aio.ClientInterceptor] = ()
) -> aio.Channel:
    """An aio channel to `cfg.address` with TLS and token as configured, and
    any further `interceptors` (tracing)."""
    options = [
        ("grpc.max_receive_message_length", cfg.max_message_bytes),
        ("grpc.max_send_message_length", cfg.max_message_bytes),
    ]
    if cfg.tls_ca:
        creds = grpc.ssl_channel_credentials(
            root_certificates=Path(cfg.tls_ca).read_bytes(),
            private_key=Path(cfg.tls_key).read_bytes() if cfg.tls_key else None,
            certificate_chain=Path(cfg.tls_cert).read_bytes() if cfg.tls_cert else None,
        )
        if cfg.token:
            creds = grpc.composite_channel_credentials(
                creds, grpc.metadata_call_credentials(_BearerAuth(cfg.token))
            )
        return aio.secure_channel(
            cfg.address, creds, options=options, interceptors=list(interceptors) or None
        )
    chain = [*interceptors, *(bearer_interceptors(cfg.token) if cfg.token else ())]
    return aio.insecure_channel(cfg.address, options=options, interceptors=chain or None)
