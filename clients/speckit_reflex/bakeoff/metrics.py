"""Figures of a bakeoff run, per backend: pass@1, success rate, JSON
compliance, p50/p95 latency, TTFT, tokens/s, and prefix-cache verification.

Computed client-side from the trials of this run, so a run prints its own
figures even when other attempts share Capsule's window. Capsule's statistics
(over PatchAttempt events) and its verdict stay the gate of record.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from speckit_reflex.bakeoff.trial import ModelCallRecord, TrialResult
from speckit_reflex.contract import percentile

# Cache verification states. "unknown": the server reported no cached-token
# figure on any retry (vLLM omits it when 0, some servers never send it).
CACHE_VERIFIED, CACHE_MISSED, CACHE_UNKNOWN, CACHE_NO_RETRIES = (
    "verified",
    "missed",
    "unknown",
    "no retries",
)


@dataclass(frozen=True)
class CacheCheck:
    """Did retries of one task reuse the prompt prefix (cached tokens > 0)?"""

    status: str
    retries: int
    retries_reporting: int
    retries_with_hits: int
    # cached / prompt tokens over the retries that reported; None if none did.
    reuse: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "retries": self.retries,
            "retries_reporting": self.retries_reporting,
            "retries_with_hits": self.retries_with_hits,
            "reuse": None if self.reuse is None else round(self.reuse, 3),
        }


def check_cache(trials: Iterable[TrialResult]) -> CacheCheck:
    """Cache-hit verification over every model call after a task's first."""
    retries: list[ModelCallRecord] = []
    for t in trials:
        retries.extend(t.calls[1:])
    reporting = [c for c in retries if c.cached_tokens is not None]
    hits = [c for c in reporting if (c.cached_tokens or 0) > 0]
    prompt = sum(c.prompt_tokens for c in reporting)
    reuse = sum(c.cached_tokens or 0 for c in reporting) / prompt if reporting and prompt else None
    if not retries:
        status = CACHE_NO_RETRIES
    elif not reporting:
        status = CACHE_UNKNOWN
    elif len(hits) == len(reporting):
        status = CACHE_VERIFIED
    else:
        status = CACHE_MISSED
    return CacheCheck(status, len(retries), len(reporting), len(hits), reuse)


@dataclass(frozen=True)
class BackendFigures:
    """One (mode, backend, model) group of a run."""

    mode: str
    backend: str
    model: str
    tasks: int
    fixed: int
    first_attempt_fixed: int
    model_calls: int
    # Calls that got a reply (a transport error is not a JSON verdict).
    answered_calls: int
    schema_valid_calls: int
    p50_latency_ms: float | None
    p95_latency_ms: float | None
    p50_ttft_ms: float | None
    mean_tokens_per_s: float | None
    cache: CacheCheck

    @property
    def success_rate(self) -> float:
        return 100.0 * self.fixed / self.tasks if self.tasks else 0.0

    @property
    def pass_at_1(self) -> float:
        return 100.0 * self.first_attempt_fixed / self.tasks if self.tasks else 0.0

    @property
    def json_compliance(self) -> float | None:
        return (
            100.0 * self.schema_valid_calls / self.answered_calls if self.answered_calls else None
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "backend": self.backend,
            "model": self.model,
            "tasks": self.tasks,
            "fixed": self.fixed,
            "pass_at_1": round(self.pass_at_1, 1),
            "success_rate": round(self.success_rate, 1),
            "model_calls": self.model_calls,
            "json_compliance_rate": _r(self.json_compliance),
            "p50_latency_ms": _r(self.p50_latency_ms),
            "p95_latency_ms": _r(self.p95_latency_ms),
            "p50_ttft_ms": _r(self.p50_ttft_ms),
            "mean_tokens_per_s": _r(self.mean_tokens_per_s),
            "cache": self.cache.to_json(),
        }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def figures_by_backend(trials: Sequence[TrialResult]) -> list[BackendFigures]:
    """Group trials by (mode, backend, model) and compute each group's figures.

    Latency, TTFT and tokens/s are per model call (the seed's "time to first
    token + completion"); success and pass@1 are per task.
    """
    groups: dict[tuple[str, str, str], list[TrialResult]] = {}
    for t in trials:
        groups.setdefault((t.mode, t.backend or "-", t.model or "-"), []).append(t)
    out = []
    for (mode, backend, model), ts in sorted(groups.items()):
        calls = [c for t in ts for c in t.calls]
        answered = [c for c in calls if c.replied]
        tps = [c.tokens_per_s for c in calls if c.tokens_per_s > 0]
        out.append(
            BackendFigures(
                mode=mode,
                backend=backend,
                model=model,
                tasks=len(ts),
                fixed=sum(t.success for t in ts),
                first_attempt_fixed=sum(t.first_attempt_success for t in ts),
                model_calls=len(calls),
                answered_calls=len(answered),
                schema_valid_calls=sum(c.schema_valid for c in calls),
                p50_latency_ms=percentile([c.latency_ms for c in answered], 0.5),
                p95_latency_ms=percentile([c.latency_ms for c in answered], 0.95),
                p50_ttft_ms=percentile([c.ttft_ms for c in calls if c.ttft_ms is not None], 0.5),
                mean_tokens_per_s=sum(tps) / len(tps) if tps else None,
                cache=check_cache(ts),
            )
        )
    return out
