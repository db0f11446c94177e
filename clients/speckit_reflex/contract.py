"""The hand-written half of the v1 contract, importable by both sides.

Layout rule: `services/` holds what runs inside a server process, `clients/`
what runs on the caller's side. This module sits beside the generated `v1/`
stubs because it is contract, not caller-side code: servers and clients both
import it, and it imports nothing of the project but `v1`.

What it holds: where the services listen by default, the short names of enum
values ("reflex" for ROUTING_MODE_REFLEX), the wire form of errors (the
ErrorInfo domain and how an ErrorReason is spelled in it), how a pNN figure is
computed from samples, and the JSON forms of the Capsule's statistics and
verdict (the CLI's `--json`, the report file and the seed's `bakeoff_stats`
shape are this one form).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, Protocol, TypeAlias

from google.protobuf.descriptor import EnumDescriptor

from speckit_reflex.v1 import capsule_pb2, common_pb2

# Where each gRPC service listens unless SPECKIT_<SERVICE>_ADDR says otherwise
# (servers bind it, clients dial it).
DEFAULT_ADDRS: dict[str, str] = {
    "router": "127.0.0.1:50051",
    "inference": "127.0.0.1:50052",
    "patchloop": "127.0.0.1:50053",
    "capsule": "127.0.0.1:50054",
}
# The OpenAI-compatible HTTP endpoint (`speckit serve openai`).
OPENAI_DEFAULT_ADDR = "127.0.0.1:50055"


class ProtoEnum(Protocol):
    """A generated enum type (`common_pb2.RoutingMode`, `patchloop_pb2.Outcome`, ...)."""

    DESCRIPTOR: EnumDescriptor

    def Name(self, number: Any) -> str: ...


def enum_prefix(enum: ProtoEnum) -> str:
    """The prefix every value of `enum` carries: RoutingMode -> "ROUTING_MODE_"."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum.DESCRIPTOR.name).upper() + "_"


def enum_name(enum: ProtoEnum, value: int) -> str:
    """The short name of one value: `enum_name(common_pb2.RoutingMode, 1)` is
    "reflex". A number the enum does not define (a newer peer's) is written
    as the number."""
    try:
        return enum.Name(value).removeprefix(enum_prefix(enum)).lower()
    except ValueError:
        return str(value)


def enum_names(enum: ProtoEnum, *, unspecified: bool = True) -> dict[int, str]:
    """Every value's short name by number (without 0 when `unspecified` is false)."""
    prefix = enum_prefix(enum)
    return {
        v.number: v.name.removeprefix(prefix).lower()
        for v in enum.DESCRIPTOR.values
        if unspecified or v.number
    }


# -- errors as data -------------------------------------------------------------

#: ErrorInfo.domain of every error the services answer (ErrorReason in common.proto).
ERROR_DOMAIN = "speckit-reflex"

ErrorReason: TypeAlias = common_pb2.ErrorReason.ValueType
_REASON_PREFIX = enum_prefix(common_pb2.ErrorReason)


def error_reason_text(reason: ErrorReason) -> str:
    """ErrorInfo.reason of an ErrorReason, as AIP-193 spells reasons:
    "ROUTE_REFUSED" for ERROR_REASON_ROUTE_REFUSED."""
    return common_pb2.ErrorReason.Name(reason).removeprefix(_REASON_PREFIX)


def error_reason(text: str) -> ErrorReason:
    """The ErrorReason of an ErrorInfo.reason ("ROUTE_REFUSED"); UNSPECIFIED
    for a reason this side does not know (a newer peer's)."""
    try:
        return common_pb2.ErrorReason.Value(_REASON_PREFIX + text)
    except ValueError:
        return common_pb2.ERROR_REASON_UNSPECIFIED


def percentile(values: Sequence[float], q: float) -> float | None:
    """The "exact" pNN figure of the contract (percentile_method "exact"):
    linear interpolation between ranked values, as SQL's percentile_cont;
    None without values."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


# Percent and millisecond figures in the JSON forms carry one decimal, as in
# the seed's example ("success_rate": 97.8).
_DECIMALS = 1
# Failures whose figures are counts of attempts, written as JSON integers.
_COUNT_FAILURES = frozenset({capsule_pb2.THRESHOLD_FAILURE_KIND_TOO_FEW_SAMPLES})


def _opt(s: Any, name: str, digits: int = _DECIMALS) -> float | None:
    """An optional figure rounded, or None (null in JSON) when it has no data."""
    return round(getattr(s, name), digits) if s.HasField(name) else None


def threshold_failure_to_json(f: capsule_pb2.ThresholdFailure) -> dict[str, Any]:
    """One failed threshold: kind, message, and the observed and required
    figures (integers for counts, as the proto's doubles would print 20.0)."""
    count = f.kind in _COUNT_FAILURES
    return {
        "kind": enum_name(capsule_pb2.ThresholdFailureKind, f.kind),
        "message": f.message,
        "observed": round(f.observed) if count else f.observed,
        "required": round(f.required) if count else f.required,
    }


def failure_lines(failures: Sequence[dict[str, Any]]) -> list[str]:
    """The failures' messages for people, each once and in order: thresholds
    that share a reason (too few tasks for both p95 and JSON compliance) say it
    once; the JSON keeps one entry per threshold."""
    return list(dict.fromkeys(f["message"] for f in failures))


def mode_stats_to_json(s: capsule_pb2.ModeStats) -> dict[str, Any]:
    """One mode's (or model's) figures in the seed's key names; null where there is no data."""
    return {
        "total_attempts": s.total_attempts,
        "successes": s.successes,
        "success_rate": _opt(s, "success_rate"),
        # Over replies received; errors (no reply) are counted apart.
        "json_compliance_rate": _opt(s, "json_compliance_rate"),
        "replies": s.replies,
        "errors": s.errors,
        "availability_percent": _opt(s, "availability_percent"),
        "p50_latency_ms": _opt(s, "p50_latency_ms"),
        "p95_latency_ms": _opt(s, "p95_latency_ms"),
        "p50_ttft_ms": _opt(s, "p50_ttft_ms"),
        "p95_ttft_ms": _opt(s, "p95_ttft_ms"),
        "mean_tokens_per_s": _opt(s, "mean_tokens_per_s"),
        "cache_hit_rate": _opt(s, "cache_hit_rate", 3),
        "cache_reported_attempts": s.cache_reported_attempts,
        # "exact", or "histogram" (<= 1 % relative error) over large windows.
        "percentile_method": s.percentile_method or None,
    }


def stats_to_seed_json(stats: capsule_pb2.BakeoffStats) -> dict[str, Any]:
    """`{"period": "24h", "reflex": {...}, "cloud": {...}, "models": [...]}` (SPEC-KIT-978)."""
    return {
        "period": stats.period,
        "start": stats.start.ToDatetime().isoformat() + "Z",
        "end": stats.end.ToDatetime().isoformat() + "Z",
        "reflex": mode_stats_to_json(stats.reflex),
        "cloud": mode_stats_to_json(stats.cloud),
        "models": [
            {
                "mode": enum_name(common_pb2.RoutingMode, m.mode),
                "model": m.model,
                **mode_stats_to_json(m.stats),
            }
            for m in stats.models
        ],
    }


def verdict_figures_to_json(f: capsule_pb2.VerdictFigures) -> dict[str, Any]:
    """One mode's figures on the judged tasks; null where there is no data."""
    return {
        "model": f.model or None,
        "model_identity": f.model_identity or None,
        "tasks": f.tasks,
        "fixed": f.fixed,
        "success_rate": _opt(f, "success_rate"),
        "pass_at_1": _opt(f, "pass_at_1"),
        "model_calls": f.model_calls,
        "replies": f.replies,
        "errors": f.errors,
        "json_compliance_rate": _opt(f, "json_compliance_rate"),
        "availability_percent": _opt(f, "availability_percent"),
        "p50_latency_ms": _opt(f, "p50_latency_ms"),
        "p95_latency_ms": _opt(f, "p95_latency_ms"),
        "skipped": f.skipped,
    }


def verdict_to_json(
    v: capsule_pb2.CheckThresholdsReply, period: str | None = None
) -> dict[str, Any]:
    """The verdict for machines (CLI --json and the report): every threshold
    with its status, the evidence it was formed from, and the live statistics
    apart; first the `period` it covers when given (the CLI's "24h", "run")."""
    b = v.baseline
    t = v.thresholds
    return {
        **({"period": period} if period is not None else {}),
        "status": enum_name(capsule_pb2.ThresholdStatus, v.status) if v.status else "not_judged",
        "passed": v.passed,
        "invalidated": v.invalidated or None,
        "model": v.model or None,
        "suite": v.suite or None,
        "suite_version": v.suite_version or None,
        "suite_digest": v.suite_digest or None,
        "bakeoff_run_ids": list(v.bakeoff_run_ids),
        "min_samples": v.min_samples,
        "thresholds": {
            "p95_latency_ms": t.p95_latency_ms,
            "success_parity_percent": t.success_parity_percent,
            "json_schema_compliance_percent": t.json_schema_compliance_percent,
            "absolute_success_percent": _opt(t, "absolute_success_percent"),
        },
        "baseline": {
            "kind": b.kind or "none",
            "bakeoff_run_id": b.bakeoff_run_id or None,
            "recorded_at": b.recorded_at.ToDatetime().isoformat() + "Z"
            if b.HasField("recorded_at")
            else None,
            "description": b.description or None,
        },
        "paired_tasks": v.paired_tasks,
        "unpaired_tasks": v.unpaired_tasks,
        "success_parity_percent": _opt(v, "success_parity_percent"),
        "reflex": verdict_figures_to_json(v.reflex),
        "cloud": verdict_figures_to_json(v.cloud),
        "results": [
            {
                "name": r.name,
                "status": enum_name(capsule_pb2.ThresholdStatus, r.status),
                "observed": _opt(r, "observed"),
                "required": r.required,
                "comparison": r.comparison,
                "message": r.message,
            }
            for r in v.results
        ],
        "failures": [threshold_failure_to_json(f) for f in v.failures],
        "live_statistics": stats_to_seed_json(v.stats),
    }
