"""Background refresh of the Router's caches, and the sources it reads.

Health comes from Inference's `Health` RPC (itself answered from Inference's
probe cache), every `routing.health.probe_interval_s`, with the identity of
the weights each server reports. Bakeoff verdicts, one per chain model
(`CheckThresholds` with `model` and that identity set), and cloud usage for the
budget (`GetUsage(mode=CLOUD)`) come from Capsule every
`routing.verdicts.refresh_s`. A failed refresh keeps the old entries, which
then age into *unknown*, and records why for the decision detail.

Sources are small protocols so the engine can be tested with in-memory ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Protocol

import grpc
from grpc import aio

from speckit_reflex.router.caches import CachedHealth, CachedVerdict, CloudUsage, RouterCaches
from speckit_reflex.v1 import (
    capsule_pb2,
    capsule_pb2_grpc,
    common_pb2,
    inference_pb2,
    inference_pb2_grpc,
)

log = logging.getLogger("speckit.router.refresh")

ChannelFactory = Callable[[], aio.Channel]


class HealthSource(Protocol):
    async def fetch(self) -> list[CachedHealth]: ...


class VerdictSource(Protocol):
    async def fetch(self, model: str, identity: str = "") -> CachedVerdict: ...


class UsageSource(Protocol):
    async def fetch(self) -> CloudUsage: ...


class InferenceHealthSource:
    """Backend health from the Inference Adapter."""

    def __init__(self, channel: ChannelFactory, timeout_s: float = 2.0):
        self._channel = channel
        self._timeout_s = timeout_s

    async def fetch(self) -> list[CachedHealth]:
        """One Health round: every backend Inference knows, with its probe time."""
        stub = inference_pb2_grpc.InferenceStub(self._channel())
        reply = await stub.Health(inference_pb2.HealthRequest(), timeout=self._timeout_s)
        # No checked_at = never probed yet ("probe_pending"): time 0 makes it
        # stale, i.e. unknown, rather than a fresh verdict.
        return [
            CachedHealth(
                backend=b.backend,
                healthy=b.healthy,
                checked_at=b.checked_at.ToMicroseconds() / 1e6 if b.HasField("checked_at") else 0.0,
                model=b.model,
                reason=b.reason,
                identity=b.identity.key,
            )
            for b in reply.backends
        ]


class CapsuleVerdictSource:
    """A chain model's own bakeoff verdict from Capsule."""

    def __init__(
        self,
        channel: ChannelFactory,
        window: str,
        min_samples: int,
        timeout_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ):
        self._channel = channel
        self._window = window
        self._min_samples = min_samples
        self._timeout_s = timeout_s
        self._clock = clock

    async def fetch(self, model: str, identity: str = "") -> CachedVerdict:
        """The verdict of the bakeoff trials of `model` on the weights `identity`."""
        stub = capsule_pb2_grpc.CapsuleStub(self._channel())
        reply = await stub.CheckThresholds(
            capsule_pb2.CheckThresholdsRequest(
                window=capsule_pb2.Window(since=self._window),
                min_samples=self._min_samples,
                model=model,
                model_identity=identity,
            ),
            timeout=self._timeout_s,
        )
        detail = "; ".join(f.message for f in reply.failures) if not reply.passed else ""
        return CachedVerdict(
            model=model,
            passed=reply.passed,
            fetched_at=self._clock(),
            detail=detail,
            identity=identity,
        )


class CapsuleUsageSource:
    """Cloud calls and tokens in the budget window, from Capsule."""

    def __init__(
        self,
        channel: ChannelFactory,
        window: str,
        timeout_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ):
        self._channel = channel
        self._window = window
        self._timeout_s = timeout_s
        self._clock = clock

    async def fetch(self) -> CloudUsage:
        stub = capsule_pb2_grpc.CapsuleStub(self._channel())
        reply = await stub.GetUsage(
            capsule_pb2.GetUsageRequest(
                window=capsule_pb2.Window(since=self._window), mode=common_pb2.ROUTING_MODE_CLOUD
            ),
            timeout=self._timeout_s,
        )
        return CloudUsage(
            calls=reply.calls,
            tokens=reply.prompt_tokens + reply.completion_tokens,
            fetched_at=self._clock(),
        )


def describe_error(exc: BaseException) -> str:
    """A short, human-readable cause for a failed refresh."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"


class CacheRefresher:
    """Keeps RouterCaches filled; decisions never wait for it."""

    def __init__(
        self,
        caches: RouterCaches,
        *,
        health: HealthSource,
        verdicts: VerdictSource,
        usage: UsageSource | None,
        models: Sequence[str],
        health_interval_s: float,
        verdict_interval_s: float,
    ):
        self._caches = caches
        self._health = health
        self._verdicts = verdicts
        self._usage = usage
        self._models = tuple(models)
        self._health_interval_s = health_interval_s
        self._verdict_interval_s = verdict_interval_s
        self._tasks: list[asyncio.Task[None]] = []

    async def refresh_health(self) -> set[tuple[str, str]]:
        """One health round; on failure the old entries stay and age. Weights
        no verdict was fetched for yet (a new or changed identity) get theirs
        now, not a verdict interval later; returns those (model, identity)."""
        try:
            statuses = await self._health.fetch()
        except Exception as exc:
            self._caches.health_error = self._note("health", self._caches.health_error, exc)
            return set()
        self._caches.set_health(statuses)
        unjudged = {p for p in self._served() if self._caches.verdict_of(*p) is None}
        await asyncio.gather(*(self._refresh_verdict(m, i) for m, i in unjudged))
        return unjudged

    def _served(self) -> list[tuple[str, str]]:
        """(model, identity) of every chain model and the weights its backends report."""
        return [(m, i) for m in self._models for i in self._caches.identities_of(m)]

    async def refresh_verdicts(self, skip: Collection[tuple[str, str]] = ()) -> None:
        """One verdict per chain model and served identity, fetched concurrently."""
        await asyncio.gather(
            *(self._refresh_verdict(m, i) for m, i in self._served() if (m, i) not in skip)
        )

    async def _refresh_verdict(self, model: str, identity: str) -> None:
        try:
            verdict = await self._verdicts.fetch(model, identity)
        except Exception as exc:
            errors = self._caches.verdict_errors
            errors[model] = self._note(f"verdict {model}", errors.get(model, ""), exc)
            return
        self._caches.set_verdict(verdict)

    async def refresh_usage(self) -> None:
        """Cloud usage for the budget caps (only when a cap is configured)."""
        if self._usage is None:
            return
        try:
            usage = await self._usage.fetch()
        except Exception as exc:
            self._caches.usage_error = self._note("usage", self._caches.usage_error, exc)
            return
        self._caches.set_usage(usage)

    async def refresh_all(self) -> None:
        # Health first: verdicts are asked for the identities it reports.
        fetched, _ = await asyncio.gather(self.refresh_health(), self.refresh_usage())
        await self.refresh_verdicts(skip=fetched)

    async def start(self, first_refresh_timeout_s: float = 2.0) -> None:
        """Fill the caches once (bounded), then keep refreshing in the background."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.refresh_all(), first_refresh_timeout_s)
        self._tasks = [
            asyncio.create_task(
                self._every(self._health_interval_s, self.refresh_health), name="router-health"
            ),
            asyncio.create_task(
                self._every(self._verdict_interval_s, self._refresh_capsule), name="router-verdicts"
            ),
        ]

    async def _refresh_capsule(self) -> None:
        await asyncio.gather(self.refresh_verdicts(), self.refresh_usage())

    @staticmethod
    async def _every(interval_s: float, refresh: Callable[[], Awaitable[object]]) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await refresh()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    @staticmethod
    def _note(what: str, previous: str, exc: BaseException) -> str:
        message = describe_error(exc)
        if message != previous:  # log changes, not every failed round
            log.warning(
                "router cache refresh failed", extra={"fields": {"source": what, "error": message}}
            )
        return message
