"""Types of grpc.aio server handlers, which grpc's stubs do not spell.

grpc's stubs type an `RpcMethodHandler`'s behaviours as synchronous
functions of a `grpc.ServicerContext`; under grpc.aio they are coroutine
functions (unary responses) and async generators, or coroutines that write
(streamed responses), of an `aio.ServicerContext`. The interceptors that wrap
behaviours name them with these aliases. (Strings: grpc's runtime classes
are not generic.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc
from grpc import aio

MethodHandler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Context: TypeAlias = "aio.ServicerContext[Any, Any]"
UnaryBehaviour: TypeAlias = "Callable[[Any, Context], Awaitable[Any]]"
StreamBehaviour: TypeAlias = "Callable[[Any, Context], AsyncIterator[Any]]"
# A streamed response's behaviour as a servicer may write it: an async
# generator, or a coroutine that streams with context.write().
WritingBehaviour: TypeAlias = "Callable[[Any, Context], AsyncIterator[Any] | Awaitable[None]]"
Continuation: TypeAlias = (
    "Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]]"
)
