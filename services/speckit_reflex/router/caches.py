"""What the Router knows about the outside world, as of the last refresh.

Decide() never waits on the network (no network on the hot path): it reads
these caches, which background tasks (`refresher.CacheRefresher`) fill from
Inference (backend health) and Capsule (bakeoff verdicts, cloud usage). Every
entry carries the wall-clock time it was observed, so the engine can judge
staleness itself; a stale entry is *unknown*, never healthy or passing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CachedHealth:
    """Health of one local backend (optionally for one model), as Inference probed it."""

    backend: str
    healthy: bool
    checked_at: float
    model: str = ""
    reason: str = ""
    # The weights the server reports behind `model` (ModelIdentity.key).
    identity: str = ""


@dataclass(frozen=True, slots=True)
class CachedVerdict:
    """Capsule's bakeoff threshold verdict for one reflex model, formed on the
    trials of the weights named by `identity` ("" = the server reports none)."""

    model: str
    passed: bool
    fetched_at: float
    detail: str = ""
    identity: str = ""


@dataclass(frozen=True, slots=True)
class CloudUsage:
    """Cloud calls and tokens in the budget window (GR-011)."""

    calls: int
    tokens: int
    fetched_at: float


class RouterCaches:
    """The latest health, verdicts and cloud usage, plus why a source failed.

    Writers replace whole entries (single event loop, no locks needed);
    readers see either the old or the new entry, never a mix.
    """

    def __init__(self) -> None:
        self._health: dict[str, CachedHealth] = {}
        self.health_error = ""
        # Keyed by (model, identity): a verdict holds for the weights it was formed on.
        self._verdicts: dict[tuple[str, str], CachedVerdict] = {}
        self.verdict_errors: dict[str, str] = {}
        self.usage: CloudUsage | None = None
        self.usage_error = ""

    def set_health(self, statuses: Iterable[CachedHealth]) -> None:
        """Replace the health table with one probe round's answer."""
        table: dict[str, CachedHealth] = {}
        for s in statuses:
            if s.model:
                table[health_key(s.backend, s.model)] = s
            # A backend-wide entry answers for models Inference did not list
            # separately; the first one reported wins.
            table.setdefault(s.backend, s)
        self._health = table
        self.health_error = ""

    def health_by_key(self, key: str, backend: str) -> CachedHealth | None:
        """Health of `backend` serving the model of `key` (see `health_key`), falling
        back to the backend-wide entry; None when never reported."""
        h = self._health
        return h.get(key) or h.get(backend)

    def set_verdict(self, verdict: CachedVerdict) -> None:
        self._verdicts[(verdict.model, verdict.identity)] = verdict
        self.verdict_errors.pop(verdict.model, None)

    def verdict_of(self, model: str, identity: str = "") -> CachedVerdict | None:
        """The verdict of `model` formed on the weights `identity`."""
        return self._verdicts.get((model, identity))

    def other_verdict(self, model: str, identity: str) -> CachedVerdict | None:
        """A verdict of `model` formed on other weights than `identity`, if any."""
        return next(
            (v for (m, i), v in self._verdicts.items() if m == model and i != identity), None
        )

    def identities_of(self, model: str) -> list[str]:
        """The weights the backends serving `model` report (one verdict is needed per identity)."""
        found = sorted({s.identity for s in self._health.values() if s.model == model})
        return found or [""]

    def set_usage(self, usage: CloudUsage) -> None:
        self.usage = usage
        self.usage_error = ""


def health_key(backend: str, model: str) -> str:
    """Cache key of one backend serving one model."""
    return f"{backend}\x00{model}"
