"""The bakeoff gate (SPEC-KIT-978): may reflex be trusted?

Required for promotion: p95 latency < threshold, success parity (reflex
success rate / cloud success rate x 100) >= threshold, JSON compliance >=
threshold (100 %), each judged only on at least `min_samples` attempts. No
evidence is never a pass: too few cloud attempts fails parity as too few
samples. Every failed reason is reported with its observed and required figure.
"""

from __future__ import annotations

from speckit_reflex.v1 import capsule_pb2, common_pb2

K = capsule_pb2.ThresholdFailureKind


def success_parity(reflex: capsule_pb2.ModeStats, cloud: capsule_pb2.ModeStats) -> float | None:
    """reflex / cloud success rate x 100; None without cloud attempts.

    When cloud solved nothing, reflex cannot be worse: parity is 100.
    """
    if not cloud.total_attempts:
        return None
    if cloud.success_rate == 0:
        return 100.0
    return reflex.success_rate / cloud.success_rate * 100.0


def reflex_stats_for(stats: capsule_pb2.BakeoffStats, model: str) -> capsule_pb2.ModeStats:
    """The reflex figures to judge: all reflex attempts, or one model's."""
    if not model:
        return stats.reflex
    for m in stats.models:
        if m.mode == common_pb2.ROUTING_MODE_REFLEX and m.model == model:
            return m.stats
    return capsule_pb2.ModeStats()


def judge(
    stats: capsule_pb2.BakeoffStats,
    thresholds: capsule_pb2.Thresholds,
    min_samples: int,
    model: str = "",
) -> capsule_pb2.CheckThresholdsReply:
    """Pass or fail, with every failed reason and its numbers."""
    reflex = reflex_stats_for(stats, model)
    cloud = stats.cloud
    who = f"reflex model {model}" if model else "reflex"
    failures: list[capsule_pb2.ThresholdFailure] = []

    def fail(kind: int, message: str, observed: float, required: float) -> None:
        failures.append(capsule_pb2.ThresholdFailure(kind=kind, message=message, observed=observed, required=required))  # type: ignore[arg-type]

    n = reflex.total_attempts
    if n < min_samples:
        fail(K.THRESHOLD_FAILURE_KIND_TOO_FEW_SAMPLES,
             f"{who}: {n} attempts in the window, at least {min_samples} required", n, min_samples)
    if n and reflex.p95_latency_ms >= thresholds.p95_latency_ms:
        fail(K.THRESHOLD_FAILURE_KIND_P95_TOO_HIGH,
             f"{who}: p95 latency {reflex.p95_latency_ms:.1f} ms, must be below {thresholds.p95_latency_ms:g} ms",
             reflex.p95_latency_ms, thresholds.p95_latency_ms)
    parity = success_parity(reflex, cloud)
    if cloud.total_attempts < min_samples:
        fail(K.THRESHOLD_FAILURE_KIND_TOO_FEW_SAMPLES,
             f"cloud: {cloud.total_attempts} attempts in the window, at least {min_samples} required "
             "to judge success parity", cloud.total_attempts, min_samples)
    elif n and parity is not None and parity < thresholds.success_parity_percent:
        fail(K.THRESHOLD_FAILURE_KIND_PARITY_TOO_LOW,
             f"{who}: success parity {parity:.1f} % (reflex {reflex.success_rate:.1f} % / cloud "
             f"{cloud.success_rate:.1f} %), at least {thresholds.success_parity_percent:g} % required",
             parity, thresholds.success_parity_percent)
    if n and reflex.json_compliance_rate < thresholds.json_schema_compliance_percent:
        fail(K.THRESHOLD_FAILURE_KIND_COMPLIANCE_TOO_LOW,
             f"{who}: JSON schema compliance {reflex.json_compliance_rate:.1f} %, at least "
             f"{thresholds.json_schema_compliance_percent:g} % required",
             reflex.json_compliance_rate, thresholds.json_schema_compliance_percent)

    reply = capsule_pb2.CheckThresholdsReply(
        passed=not failures, failures=failures, thresholds=thresholds, min_samples=min_samples,
        stats=stats, model=model,
    )
    if parity is not None:
        reply.success_parity_percent = parity
    return reply
