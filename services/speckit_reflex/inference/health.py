"""Backend health: reachable, model listed, and a real 1-token generation.

`/health` alone can answer 200 while generation hangs, so a backend is only
healthy when its model listing succeeds, a configured model is listed, and a
1-token generation finishes within the probe timeout. Results are cached and
refreshed in the background every probe interval, so Health answers from the
cache at once; callers judge staleness from `checked_at`. Failed calls put a
backend in a cooldown, during which failover skips it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from speckit_reflex.inference.backends import ModelServer, UpstreamFailure
from speckit_reflex.inference.identity import ModelIdentity, read_identity

log = logging.getLogger("speckit.inference.health")

# How long a cached Health read waits for a backend's very first probe.
FIRST_PROBE_WAIT_S = 1.0


@dataclass(frozen=True)
class BackendStatus:
    """The outcome of one probe of one backend."""

    backend: str
    kind: str
    endpoint: str
    model: str = ""
    healthy: bool = False
    reachable: bool = False
    model_listed: bool = False
    generation_ok: bool = False
    reason: str = ""
    probe_latency_ms: float = 0.0
    #: wall-clock seconds (time.time()) of the probe; 0 = never probed
    checked_at: float = 0.0
    cooling_down: bool = False
    listed_models: tuple[str, ...] = field(default=(), compare=False)
    # The weights behind `model` as the server reports them (verdicts are keyed by it).
    identity: ModelIdentity = field(default_factory=ModelIdentity)


@dataclass(frozen=True)
class ProbeTiming:
    interval_s: float
    timeout_s: float
    cooldown_s: float
    stale_after_s: float


class HealthBook:
    """Cached probe results and cooldowns of every backend, refreshed in the background."""

    def __init__(
        self,
        servers: dict[str, ModelServer],
        timing: ProbeTiming,
        *,
        background: tuple[str, ...] = (),
        clock: Callable[[], float] = time.time,
    ):
        self._servers = servers
        self._timing = timing
        self._background = background
        self._clock = clock
        self._records: dict[str, BackendStatus] = {}
        self._inflight: dict[str, asyncio.Task[BackendStatus]] = {}
        self._cooldown_until: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def probe_timeout_s(self) -> float:
        return self._timing.timeout_s

    # -- cooldown -------------------------------------------------------------

    def mark_failed(self, name: str) -> None:
        """Start the cooldown of a backend after a failed call."""
        self._cooldown_until[name] = time.monotonic() + self._timing.cooldown_s

    def cooling_down(self, name: str) -> bool:
        until = self._cooldown_until.get(name)
        return until is not None and time.monotonic() < until

    def cooldown_remaining_s(self, name: str) -> float:
        until = self._cooldown_until.get(name)
        return max(0.0, until - time.monotonic()) if until is not None else 0.0

    # -- cached knowledge used by failover ---------------------------------------

    def last_probe(self, name: str) -> BackendStatus | None:
        """The latest probe result of a backend, however old (None = never probed)."""
        return self._records.get(name)

    def fresh(self, name: str) -> BackendStatus | None:
        """The cached status if it is younger than stale_after_s."""
        rec = self._records.get(name)
        if rec is None or self._clock() - rec.checked_at > self._timing.stale_after_s:
            return None
        return rec

    # -- probing --------------------------------------------------------------

    async def status(self, name: str, refresh: bool = False) -> BackendStatus:
        """The cached status; with `refresh`, a new probe's result.

        Before the first probe has finished, a cached read waits for it only
        briefly and then answers "probe_pending" (unhealthy, never checked):
        a poller such as the Router must not hang on a slow backend.
        """
        rec = self._records.get(name)
        if refresh:
            rec = await self.probe(name)
        elif rec is None:
            try:
                rec = await asyncio.wait_for(
                    self.probe(name), min(FIRST_PROBE_WAIT_S, self._timing.timeout_s)
                )
            except TimeoutError:
                server = self._servers[name].spec
                rec = BackendStatus(
                    backend=name,
                    kind=server.kind,
                    endpoint=server.endpoint,
                    model=server.models[0] if server.models else "",
                    reason="probe_pending",
                )
        return replace(rec, cooling_down=self.cooling_down(name))

    async def probe(self, name: str) -> BackendStatus:
        """Probe now; concurrent callers share one probe per backend."""
        task = self._inflight.get(name)
        if task is None:
            task = asyncio.create_task(self._probe(self._servers[name]), name=f"probe-{name}")
            self._inflight[name] = task
            task.add_done_callback(lambda _t: self._inflight.pop(name, None))
        return await asyncio.shield(task)

    async def _probe(self, server: ModelServer) -> BackendStatus:
        spec = server.spec
        base = BackendStatus(
            backend=spec.name,
            kind=spec.kind,
            endpoint=spec.endpoint,
            model=spec.models[0] if spec.models else "",
        )
        timeout = self._timing.timeout_s
        started = time.perf_counter()
        rec = base
        try:
            cards = await server.list_models(timeout)
            listed = tuple(c["id"] for c in cards)
            rec = replace(base, reachable=True, listed_models=listed)
            model = next((m for m in spec.models if m in listed), "")
            if not model:
                rec = replace(
                    rec,
                    reason=f"model_not_listed: {base.model} (server lists {', '.join(listed) or 'none'})",
                )
            else:
                card = next(c for c in cards if c["id"] == model)
                rec = replace(
                    rec,
                    model=model,
                    model_listed=True,
                    identity=await read_identity(server, spec.kind, card, timeout),
                )
                try:
                    await server.probe_generation(model, timeout)
                    rec = replace(rec, generation_ok=True, healthy=True)
                except UpstreamFailure as exc:
                    rec = replace(rec, reason=f"generation_probe_failed: {exc}")
        except UpstreamFailure as exc:
            rec = replace(base, reason=f"unreachable: {exc}")
        rec = replace(
            rec, probe_latency_ms=(time.perf_counter() - started) * 1000, checked_at=self._clock()
        )
        previous = self._records.get(spec.name)
        self._records[spec.name] = rec
        if previous is not None and previous.healthy != rec.healthy:
            log.warning(
                "backend health changed",
                extra={
                    "fields": {"backend": spec.name, "healthy": rec.healthy, "reason": rec.reason}
                },
            )
        return rec

    # -- background refresh -------------------------------------------------------

    def start(self) -> None:
        """Refresh the background backends every probe interval, at a fixed rate."""
        if self._task is None and self._background:
            self._task = asyncio.create_task(self._refresh_forever(), name="health-refresh")

    async def _refresh_forever(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            await asyncio.gather(*(self.probe(n) for n in self._background), return_exceptions=True)
            next_at = max(next_at + self._timing.interval_s, loop.time())
            await asyncio.sleep(next_at - loop.time())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for task in list(self._inflight.values()):
            task.cancel()
