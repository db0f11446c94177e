"""The bakeoff gate (SPEC-KIT-978): may reflex be trusted?

A verdict is formed from bakeoff trials, never from production traffic:

1. the trials of one bakeoff run, or of the suite's runs that started in the
   window (the newest trial of each task and mode wins); skipped trials (a
   cloud key missing) are no results;
2. with a model identity given, only reflex trials recorded against that
   identity count: a server now serving other weights under the same name
   invalidates the verdict, and the verdict says so;
3. success is per task. Parity compares reflex and cloud on the SAME tasks
   (a task only one mode ran is not compared); without cloud results in the
   judged runs, the cloud trials of the newest earlier run of the same suite
   version are the baseline (named, with its date), else the policy's
   absolute success threshold, else parity is not judged;
4. p95 latency over every model call that got a reply; JSON compliance over
   replies received (a timeout or a cooling-down backend is an error, counted
   in availability, not a schema failure);
5. each threshold is pass, fail or not_judged (no data or fewer than
   `min_samples` tasks): not_judged is never a pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from speckit_reflex.contract import percentile
from speckit_reflex.v1 import capsule_pb2, common_pb2

K = capsule_pb2.ThresholdFailureKind
S = capsule_pb2.ThresholdStatus
REFLEX, CLOUD = common_pb2.ROUTING_MODE_REFLEX, common_pb2.ROUTING_MODE_CLOUD

SAME_RUNS, RECORDED_RUN, ABSOLUTE, NO_BASELINE = "same_runs", "recorded_run", "absolute", "none"


@dataclass(frozen=True)
class TrialFact:
    """What the verdict reads of one stored trial."""

    bakeoff_run_id: str
    task_id: str
    mode: int
    model: str
    success: bool
    first_attempt_success: bool
    model_calls: int
    replies: int
    schema_valid_replies: int
    call_latency_ms: tuple[float, ...]
    skipped: str
    model_identity: str

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> TrialFact:
        return cls(
            r["bakeoff_run_id"],
            r["task_id"],
            r["mode"],
            r["model"],
            bool(r["success"]),
            bool(r["first_attempt_success"]),
            r["model_calls"],
            r["replies"],
            r["schema_valid_replies"],
            tuple(float(x) for x in (r["call_latency_ms"] or ())),
            r["skipped"],
            r["model_identity"],
        )


@dataclass(frozen=True)
class RunFact:
    id: str
    suite: str
    suite_version: int
    started_us: int | None


@dataclass
class Evidence:
    """The trials judged (newest run first) and where to find a recorded baseline."""

    runs: list[RunFact]
    trials: list[TrialFact]
    # (suite, version, runs to exclude) -> (baseline run, its cloud trials) or None.
    recorded_baseline: Callable[
        [str, int, Sequence[str]], tuple[RunFact, list[TrialFact]] | None
    ] = lambda *_: None
    suite: str = ""
    notes: list[str] = field(default_factory=list)


def _pct(part: int, whole: int) -> float | None:
    return 100.0 * part / whole if whole else None


def _latest_per_task(trials: Iterable[TrialFact]) -> dict[str, TrialFact]:
    """The first trial of each task in newest-first order: the latest evidence."""
    out: dict[str, TrialFact] = {}
    for t in trials:
        out.setdefault(t.task_id, t)
    return out


def figures(
    mode: common_pb2.RoutingMode.ValueType, trials: Sequence[TrialFact], skipped: int = 0
) -> capsule_pb2.VerdictFigures:
    """One mode's figures over the judged tasks; unset where there is no data."""
    f = capsule_pb2.VerdictFigures(mode=mode, skipped=skipped)
    models = sorted({t.model for t in trials if t.model})
    identities = sorted({t.model_identity for t in trials if t.model_identity})
    f.model, f.model_identity = ", ".join(models), ", ".join(identities)
    f.tasks = len(trials)
    f.fixed = sum(t.success for t in trials)
    f.model_calls = sum(t.model_calls for t in trials)
    f.replies = sum(t.replies for t in trials)
    f.schema_valid_replies = sum(t.schema_valid_replies for t in trials)
    f.errors = f.model_calls - f.replies
    latencies = [x for t in trials for x in t.call_latency_ms]
    optional = {
        "success_rate": _pct(f.fixed, f.tasks),
        "pass_at_1": _pct(sum(t.first_attempt_success for t in trials), f.tasks),
        "json_compliance_rate": _pct(f.schema_valid_replies, f.replies),
        "availability_percent": _pct(f.replies, f.model_calls),
        "p50_latency_ms": percentile(latencies, 0.5),
        "p95_latency_ms": percentile(latencies, 0.95),
    }
    for name, value in optional.items():
        if value is not None:
            setattr(f, name, value)
    return f


def success_parity(reflex_rate: float, cloud_rate: float) -> float:
    """reflex / cloud success rate x 100; when cloud solved nothing, reflex cannot be worse."""
    return 100.0 if cloud_rate == 0 else reflex_rate / cloud_rate * 100.0


def _date(us: int | None) -> str:
    return (
        "an unknown date"
        if us is None
        else datetime.fromtimestamp(us / 1e6, UTC).strftime("%Y-%m-%d %H:%M UTC")
    )


class _Gate:
    """Collects threshold results and the failures list that mirrors them."""

    def __init__(self) -> None:
        self.results: list[capsule_pb2.ThresholdResult] = []
        self.failures: list[capsule_pb2.ThresholdFailure] = []

    def add(
        self,
        name: str,
        status: S.ValueType,
        observed: float | None,
        required: float,
        comparison: str,
        message: str,
        kind: K.ValueType,
        counts: tuple[int, int] | None = None,
    ) -> None:
        """One threshold's result; a failure mirrors it (with the task counts
        observed and required when there were too few)."""
        r = capsule_pb2.ThresholdResult(
            name=name,
            status=status,
            required=required,
            comparison=comparison,
            message=message,
        )
        if observed is not None:
            r.observed = observed
        self.results.append(r)
        if status != S.THRESHOLD_STATUS_PASS:
            seen, needed = counts if counts is not None else (observed or 0.0, required)
            self.failures.append(
                capsule_pb2.ThresholdFailure(
                    kind=kind, message=message, observed=seen, required=needed
                )
            )

    def status(self) -> S.ValueType:
        statuses = {r.status for r in self.results}
        if S.THRESHOLD_STATUS_FAIL in statuses:
            return S.THRESHOLD_STATUS_FAIL
        if S.THRESHOLD_STATUS_NOT_JUDGED in statuses or not statuses:
            return S.THRESHOLD_STATUS_NOT_JUDGED
        return S.THRESHOLD_STATUS_PASS


def judge(
    evidence: Evidence,
    thresholds: capsule_pb2.Thresholds,
    min_samples: int,
    model: str = "",
    model_identity: str = "",
) -> capsule_pb2.CheckThresholdsReply:
    """The verdict, every threshold with its status, and the figures it was formed from."""
    who = f"reflex model {model}" if model else "reflex"
    reflex_all = [
        t for t in evidence.trials if t.mode == REFLEX and (not model or t.model == model)
    ]
    cloud_all = [t for t in evidence.trials if t.mode == CLOUD]
    reply = capsule_pb2.CheckThresholdsReply(
        thresholds=thresholds,
        min_samples=min_samples,
        model=model,
        suite=evidence.suite,
        bakeoff_run_ids=[r.id for r in evidence.runs],
    )
    if evidence.runs:
        reply.suite_version = evidence.runs[0].suite_version
    gate = _Gate()

    ran = [t for t in reflex_all if not t.skipped]
    if model_identity:
        other = [t for t in ran if t.model_identity != model_identity]
        ran = [t for t in ran if t.model_identity == model_identity]
        if other and not ran:
            was = other[0]
            run = next((r for r in evidence.runs if r.id == was.bakeoff_run_id), None)
            reply.invalidated = (
                f"model identity changed: bakeoff run {was.bakeoff_run_id} of {_date(run.started_us if run else None)} "
                f"measured {was.model_identity or 'weights it did not record'}, the server now reports "
                f"{model_identity}; re-run the bakeoff"
            )
            gate.failures.append(
                capsule_pb2.ThresholdFailure(
                    kind=K.THRESHOLD_FAILURE_KIND_MODEL_CHANGED,
                    message=f"{who}: {reply.invalidated}",
                )
            )
    reflex_tasks = _latest_per_task(ran)
    cloud_tasks = _latest_per_task(t for t in cloud_all if not t.skipped)
    paired = sorted(reflex_tasks.keys() & cloud_tasks.keys())
    baseline = capsule_pb2.VerdictBaseline(kind=NO_BASELINE)
    if paired:
        baseline.kind = SAME_RUNS
        baseline.description = "cloud trials of the same tasks in the judged runs"
    elif reflex_tasks and evidence.runs:
        recorded = evidence.recorded_baseline(
            evidence.suite, evidence.runs[0].suite_version, [r.id for r in evidence.runs]
        )
        if recorded is not None:
            run, trials = recorded
            cloud_tasks = _latest_per_task(t for t in trials if not t.skipped)
            paired = sorted(reflex_tasks.keys() & cloud_tasks.keys())
            if paired:
                baseline.kind, baseline.bakeoff_run_id = RECORDED_RUN, run.id
                if run.started_us is not None:
                    baseline.recorded_at.FromMicroseconds(run.started_us)
                baseline.description = (
                    f"cloud results of run {run.id} ({run.suite} v{run.suite_version}) "
                    f"recorded {_date(run.started_us)}"
                )
    if not paired and thresholds.HasField("absolute_success_percent"):
        baseline.kind = ABSOLUTE
        baseline.description = (
            f"absolute success threshold {thresholds.absolute_success_percent:g} % from the policy"
        )
    reply.baseline.CopyFrom(baseline)

    judged = [reflex_tasks[k] for k in paired] if paired else list(reflex_tasks.values())
    reply.paired_tasks = len(paired)
    reply.unpaired_tasks = len(reflex_tasks.keys() ^ cloud_tasks.keys())
    reply.reflex.CopyFrom(figures(REFLEX, judged, skipped=sum(1 for t in reflex_all if t.skipped)))
    reply.cloud.CopyFrom(
        figures(
            CLOUD, [cloud_tasks[k] for k in paired], skipped=sum(1 for t in cloud_all if t.skipped)
        )
    )
    rf, cf = reply.reflex, reply.cloud
    enough = rf.tasks >= min_samples
    few = f"{who}: {rf.tasks} task(s) judged, at least {min_samples} required"

    def gate_on(
        name: str,
        observed: float | None,
        required: float,
        passes: Callable[[float], bool],
        comparison: str,
        label: str,
        fail_kind: K.ValueType,
        unit: str,
    ) -> None:
        if observed is None or not enough:
            why = few if not enough else f"{who}: no {label} figure (no data)"
            gate.add(
                name,
                S.THRESHOLD_STATUS_NOT_JUDGED,
                observed,
                required,
                comparison,
                why,
                K.THRESHOLD_FAILURE_KIND_TOO_FEW_SAMPLES
                if not enough
                else K.THRESHOLD_FAILURE_KIND_NO_DATA,
                counts=(rf.tasks, min_samples) if not enough else None,
            )
        elif passes(observed):
            gate.add(
                name,
                S.THRESHOLD_STATUS_PASS,
                observed,
                required,
                comparison,
                f"{who}: {label} {observed:.1f}{unit} {comparison} {required:g}{unit}",
                K.THRESHOLD_FAILURE_KIND_UNSPECIFIED,
            )
        else:
            gate.add(
                name,
                S.THRESHOLD_STATUS_FAIL,
                observed,
                required,
                comparison,
                f"{who}: {label} {observed:.1f}{unit}, must be {comparison} {required:g}{unit}",
                fail_kind,
            )

    p95 = rf.p95_latency_ms if rf.HasField("p95_latency_ms") else None
    gate_on(
        "p95_latency_ms",
        p95,
        thresholds.p95_latency_ms,
        lambda x: x < thresholds.p95_latency_ms,
        "<",
        "p95 latency",
        K.THRESHOLD_FAILURE_KIND_P95_TOO_HIGH,
        " ms",
    )

    required = thresholds.success_parity_percent
    if baseline.kind in (SAME_RUNS, RECORDED_RUN):
        parity = success_parity(rf.success_rate, cf.success_rate)
        reply.success_parity_percent = parity
        gate_on(
            "success_parity_percent",
            parity,
            required,
            lambda x: x >= required,
            ">=",
            f"success parity on {len(paired)} shared task(s) (reflex {rf.success_rate:.1f} % / cloud "
            f"{cf.success_rate:.1f} %, baseline: {baseline.description})",
            K.THRESHOLD_FAILURE_KIND_PARITY_TOO_LOW,
            " %",
        )
    elif baseline.kind == ABSOLUTE:
        absolute = thresholds.absolute_success_percent
        rate = rf.success_rate if rf.HasField("success_rate") else None
        gate_on(
            "success_percent",
            rate,
            absolute,
            lambda x: x >= absolute,
            ">=",
            "success (absolute baseline, no cloud results of the same tasks)",
            K.THRESHOLD_FAILURE_KIND_PARITY_TOO_LOW,
            " %",
        )
    else:
        gate.add(
            "success_parity_percent",
            S.THRESHOLD_STATUS_NOT_JUDGED,
            None,
            required,
            ">=",
            f"{who}: success parity not judged: no cloud trials of the same tasks, no recorded run of "
            f"suite {evidence.suite or '?'} with cloud results, and no "
            "routing.reflex.thresholds.absolute_success_percent in the policy",
            K.THRESHOLD_FAILURE_KIND_NO_BASELINE,
        )

    compliance = rf.json_compliance_rate if rf.HasField("json_compliance_rate") else None
    need = thresholds.json_schema_compliance_percent
    gate_on(
        "json_schema_compliance_percent",
        compliance,
        need,
        lambda x: x >= need,
        ">=",
        "JSON schema compliance over replies received",
        K.THRESHOLD_FAILURE_KIND_COMPLIANCE_TOO_LOW,
        " %",
    )

    status = gate.status()
    if reply.invalidated and status == S.THRESHOLD_STATUS_PASS:
        status = S.THRESHOLD_STATUS_NOT_JUDGED
    reply.status = status
    reply.passed = status == S.THRESHOLD_STATUS_PASS
    reply.results.extend(gate.results)
    reply.failures.extend(gate.failures)
    return reply
