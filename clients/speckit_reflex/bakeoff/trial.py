"""One trial = one suite task run once through PatchLoop in one mode. Built
from the PatchLoop progress stream; success is the compiler's and the tests'
word (outcome FIXED under `cargo test`, GR-006), never the model's."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from speckit_reflex.bakeoff.lint import FAIL, LintResult
from speckit_reflex.contract import enum_name
from speckit_reflex.v1 import capsule_pb2, common_pb2, patchloop_pb2

MODE_NAMES = {common_pb2.ROUTING_MODE_REFLEX: "reflex", common_pb2.ROUTING_MODE_CLOUD: "cloud"}
MODE_VALUES = {v: k for k, v in MODE_NAMES.items()}


@dataclass(frozen=True)
class ModelCallRecord:
    """One model call of a trial, as PatchLoop reported it."""

    attempt: int
    backend: str
    model: str
    mode: str
    schema_valid: bool
    latency_ms: float
    ttft_ms: float | None
    tokens_per_s: float
    prompt_tokens: int
    completion_tokens: int
    # None = the server did not report cached tokens (unknown, not a miss).
    cached_tokens: int | None
    error: str
    # The server answered (a reply, valid or not). False: the call failed
    # (timeout, backend cooling down, connection error), an error, not a
    # schema failure.
    replied: bool = True

    @classmethod
    def from_proto(cls, attempt: int, c: patchloop_pb2.ModelCall) -> ModelCallRecord:
        return cls(
            attempt=attempt,
            backend=c.backend,
            model=c.model,
            mode=enum_name(common_pb2.RoutingMode, c.mode),
            schema_valid=c.schema_valid,
            latency_ms=c.timing.latency_ms,
            ttft_ms=c.timing.ttft_ms if c.timing.HasField("ttft_ms") else None,
            tokens_per_s=c.timing.tokens_per_s,
            prompt_tokens=c.usage.prompt_tokens,
            completion_tokens=c.usage.completion_tokens,
            cached_tokens=c.usage.cached_tokens if c.usage.HasField("cached_tokens") else None,
            error=c.error,
            # PatchLoop reports a failed call with no generation attempts.
            replied=c.attempts > 0 or c.schema_valid,
        )


@dataclass
class TrialResult:
    """What one task in one mode came to."""

    trial_id: str
    task_id: str
    category: str
    difficulty: str
    mode: str
    run_id: str = ""
    outcome: str = "unspecified"
    fixed_by: str = "unspecified"
    reason: str = ""
    attempts: int = 0
    duration_ms: float = 0.0
    calls: list[ModelCallRecord] = field(default_factory=list)
    routed_model: str = ""
    routed_backend: str = ""
    # Set when the trial could not run or go on: PatchLoop unreachable, or the
    # run ended OUTCOME_ERROR (the Router unreachable). An error, not a refusal,
    # and of the bakeoff's own services, not of the model: the trial is
    # recorded as no result (Trial.skipped), so an outage never counts as a
    # task the model failed.
    error: str = ""
    # Why the trial was not run (a cloud key missing, local_only): no result.
    skipped: str = ""
    # What the server reported about the model's weights (ModelIdentity.key).
    model_identity: str = ""
    # cargo clippy on the fix (set for fixed trials when linting is on).
    lint: LintResult | None = None
    finished_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def success(self) -> bool:
        """Compiles, its tests pass, and no new clippy::correctness warning (GR-006, seed: tests and lint)."""
        return self.outcome == "fixed" and (self.lint is None or self.lint.status != FAIL)

    @property
    def no_result_reason(self) -> str:
        """Why this trial is no result for the gate ("" when it is one)."""
        return self.skipped or (f"error: {self.error}" if self.error else "")

    @property
    def first_attempt_success(self) -> bool:
        """Fixed by the first patch (pass@1 of the loop)."""
        return self.success and self.attempts <= 1

    @property
    def replies(self) -> list[ModelCallRecord]:
        """Calls that got a reply; the others were errors."""
        return [c for c in self.calls if c.replied]

    @property
    def json_valid(self) -> bool:
        """Every reply of the trial validated against the patch schema."""
        replies = self.replies
        return bool(replies) and all(c.schema_valid for c in replies)

    @property
    def model(self) -> str:
        return self.calls[-1].model if self.calls else self.routed_model

    @property
    def backend(self) -> str:
        return self.calls[-1].backend if self.calls else self.routed_backend

    def absorb(self, ev: patchloop_pb2.RunEvent) -> None:
        """Fold one progress event of the PatchLoop stream into the trial."""
        self.run_id = self.run_id or ev.run_id
        kind = ev.WhichOneof("kind")
        if kind == "routing":
            self.routed_model, self.routed_backend = ev.routing.model, ev.routing.backend
        elif kind == "model_call":
            self.calls.append(ModelCallRecord.from_proto(ev.attempt, ev.model_call))
        elif kind == "result":
            r = ev.result
            self.outcome = enum_name(patchloop_pb2.Outcome, r.outcome)
            self.fixed_by = enum_name(patchloop_pb2.FixSource, r.fixed_by)
            self.reason = r.reason
            self.attempts = r.attempts
            self.duration_ms = r.duration_ms
            if r.outcome == patchloop_pb2.OUTCOME_ERROR:
                self.error = r.reason

    def to_proto(self, bakeoff_run_id: str) -> capsule_pb2.Trial:
        """The Capsule Trial record (latency = the whole run's wall time)."""
        t = capsule_pb2.Trial(
            id=self.trial_id,
            bakeoff_run_id=bakeoff_run_id,
            task_id=self.task_id,
            category=self.category,
            mode=MODE_VALUES[self.mode],
            model=self.model,
            backend=self.backend,
            success=self.success,
            attempts=self.attempts,
            json_valid=self.json_valid,
            latency_ms=self.duration_ms,
            tokens_per_s=_mean([c.tokens_per_s for c in self.calls if c.tokens_per_s > 0]),
            prompt_tokens=sum(c.prompt_tokens for c in self.calls),
            reason=self.skipped or self.error or self.reason or self.outcome,
            run_id=self.run_id,
            model_calls=len(self.calls),
            replies=len(self.replies),
            schema_valid_replies=sum(c.schema_valid for c in self.replies),
            first_attempt_success=self.first_attempt_success,
            skipped=self.no_result_reason,
            call_latency_ms=[c.latency_ms for c in self.replies],
            model_identity=self.model_identity,
            lint=self.lint.describe() if self.lint else "",
        )
        if self.calls and self.calls[0].ttft_ms is not None:
            t.ttft_ms = self.calls[0].ttft_ms
        reported = [c.cached_tokens for c in self.calls if c.cached_tokens is not None]
        if reported:
            t.cached_tokens = sum(reported)
        t.time.FromDatetime(self.finished_at)
        return t

    def to_json(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "category": self.category,
            "difficulty": self.difficulty,
            "mode": self.mode,
            "model": self.model,
            "backend": self.backend,
            "success": self.success,
            "outcome": self.outcome,
            "fixed_by": self.fixed_by,
            "attempts": self.attempts,
            "model_calls": len(self.calls),
            "json_valid": self.json_valid,
            "duration_ms": round(self.duration_ms, 1),
            "reason": self.skipped or self.error or self.reason,
            "skipped": self.skipped or None,
            "errors": len(self.calls) - len(self.replies),
            "model_identity": self.model_identity or None,
            "lint": self.lint.describe() if self.lint else None,
            "run_id": self.run_id,
        }


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0
