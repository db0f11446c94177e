"""One model-backed attempt of a run, step by step.

    route → prompt → call → validate → apply → build → keep or revert → record

The Router picks the mode and model (with the session's consecutive-failure
count, so escalation to cloud follows the policy); the prompt shows the
failing files and their diagnostics, with earlier failures last so the
server's prefix cache hits; the Inference Adapter answers under the patch
schema; the patch is checked and planned before anything is written, then
applied and built. A patch that leaves a new error or makes no progress is
reverted (patchloop/progress.py). Every attempt ends as one PATCH_ATTEMPT
event, except a refusal, which ends the run instead.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from speckit_reflex.contract import enum_name
from speckit_reflex.patchloop.compiler import CompileOutcome
from speckit_reflex.patchloop.patch import (
    PatchBounds,
    PatchEdit,
    PatchRejected,
    parse_patch,
    patch_schema,
    plan_patch,
)
from speckit_reflex.patchloop.ports import (
    InferencePort,
    ModelCallFailed,
    RouteRefused,
    RouterFailed,
    RouterPort,
)
from speckit_reflex.patchloop.progress import judge_patch
from speckit_reflex.patchloop.prompt import (
    FailedAttempt,
    build_messages,
    file_excerpts,
    render_diagnostics,
)
from speckit_reflex.patchloop.spec import RunSpec
from speckit_reflex.patchloop.steps import AttemptTiming, Builder, Disk, RunReport
from speckit_reflex.patchloop.workspace import Scratch
from speckit_reflex.v1 import common_pb2, inference_pb2, patchloop_pb2, router_pb2

RETRY_TEMPERATURE = 0.3

MODE_SOURCE: dict[int, patchloop_pb2.FixSource.ValueType] = {
    common_pb2.ROUTING_MODE_REFLEX: patchloop_pb2.FIX_SOURCE_REFLEX,
    common_pb2.ROUTING_MODE_CLOUD: patchloop_pb2.FIX_SOURCE_CLOUD,
}


@dataclass(frozen=True)
class PatchFormat:
    """The patch a run asks for: its bounds and JSON Schema (as sent)."""

    bounds: PatchBounds
    schema: dict[str, Any]
    schema_text: str

    @classmethod
    def for_max_tokens(cls, max_tokens: int) -> PatchFormat:
        bounds = PatchBounds.for_max_tokens(max_tokens)
        schema = patch_schema(bounds)
        return cls(bounds, schema, json.dumps(schema, separators=(",", ":")))


class Routes:
    """The modes a run's attempts were routed to: the last one, and whether
    the run went from reflex to cloud."""

    def __init__(self) -> None:
        self.last_mode: common_pb2.RoutingMode.ValueType = common_pb2.ROUTING_MODE_UNSPECIFIED
        self.escalated = False

    def follow(self, mode: common_pb2.RoutingMode.ValueType) -> bool:
        """Record the next attempt's mode; True when it escalates to cloud."""
        escalates = (
            mode == common_pb2.ROUTING_MODE_CLOUD
            and self.last_mode == common_pb2.ROUTING_MODE_REFLEX
        )
        self.escalated = self.escalated or escalates
        self.last_mode = mode
        return escalates


@dataclass(frozen=True)
class AttemptContext:
    """What every attempt of one run works with."""

    spec: RunSpec
    scratch: Scratch
    disk: Disk
    report: RunReport
    builder: Builder
    router: RouterPort
    inference: InferencePort
    model_timeout_s: float
    patch: PatchFormat
    routes: Routes
    #: the run's failed attempts so far, shown to the model at the prompt's end
    feedback: list[FailedAttempt]


@dataclass(frozen=True)
class AttemptResult:
    """How an attempt ended: the state to continue from and why it failed."""

    state: CompileOutcome
    fixed: bool = False
    #: the attempt ends the run with this outcome: OUTCOME_REFUSED when the
    #: policy said no (the Router's refusal, a cloud call refused before it
    #: left), OUTCOME_ERROR when there was no route at all (the Router
    #: unreachable or failing: an error, never a refusal)
    ends_run: patchloop_pb2.Outcome.ValueType | None = None
    reason: str = ""


class Attempt:
    """One model-backed attempt from the state `before`."""

    def __init__(self, ctx: AttemptContext, number: int, before: CompileOutcome, failures: int):
        self._ctx = ctx
        self._number = number
        self._before = before
        self._failures = failures
        self._timing = AttemptTiming()

    async def run(self) -> AttemptResult:
        """route → prompt → call → validate → apply → build → keep or revert → record."""
        try:
            decision = await self._route()
        except RouteRefused as refused:
            return self._ends_run(patchloop_pb2.OUTCOME_REFUSED, "route refused", refused.detail)
        except RouterFailed as failed:
            return self._ends_run(patchloop_pb2.OUTCOME_ERROR, "no route", failed.reason)
        messages = await self._prompt()
        try:
            reply = await self._call(decision, messages)
        except ModelCallFailed as exc:
            if exc.reason == common_pb2.ERROR_REASON_CLOUD_KEY_MISSING:
                # Refused before leaving the machine: not an attempt, a refusal that names the variable.
                return self._ends_run(
                    patchloop_pb2.OUTCOME_REFUSED, "cloud call refused", exc.detail
                )
            return self._model_failed(decision, exc)
        try:
            edits = self._validate(reply)
            planned, previous = await self._apply(decision, edits)
        except PatchRejected as rejected:
            return self._rejected(decision, reply, rejected)
        after = await self._ctx.builder.compile(self._timing)
        if after.clean:
            return self._fixed(decision, reply, after, edits, planned)
        return await self._keep_or_revert(decision, reply, after, edits, planned, previous)

    # -- the steps ---------------------------------------------------------

    async def _route(self) -> router_pb2.RoutingDecision:
        """The Router's decision (RouteRefused when the policy forbids a route,
        RouterFailed when the Router gives no answer)."""
        spec, report = self._ctx.spec, self._ctx.report
        decision = await self._ctx.router.decide(
            router_pb2.DecideRequest(
                stage=common_pb2.STAGE_IMPLEMENT,
                role=common_pb2.ROLE_IMPLEMENTER,
                session_id=spec.session_id,
                run_id=spec.run_id,
                attempt=self._number,
                consecutive_failures=self._failures,
                local_only=spec.local_only,
                force_mode=spec.force_mode,
            )
        )
        report.event(routing=decision)
        if self._ctx.routes.follow(decision.mode):
            report.note(
                f"escalated to cloud after {self._failures} consecutive failure(s): {decision.detail or decision.reason}"
            )
        return decision

    async def _prompt(self) -> list[dict[str, str]]:
        """Excerpts of the failing files (read from disk off the event loop,
        once per run), the diagnostics, and the feedback on earlier failed
        attempts."""
        scratch, errors = self._ctx.scratch, self._before.diagnostics.errors
        await self._ctx.disk.read_ahead(scratch, (s.file for d in errors for s in d.spans))
        return build_messages(
            self._ctx.patch.bounds,
            file_excerpts(errors, self._read_quietly, scratch.resolve),
            render_diagnostics(errors, f"{scratch.root}/"),
            self._ctx.feedback,
        )

    async def _call(
        self, decision: router_pb2.RoutingDecision, messages: list[dict[str, str]]
    ) -> inference_pb2.CompleteReply:
        """The model's reply under the patch schema (ModelCallFailed without one)."""
        spec = self._ctx.spec
        request = inference_pb2.CompleteRequest(
            # Reflex: name the model only, so the adapter can fail over to the
            # next local backend serving it if the Router's pick just died
            # (its health view may be one probe interval old). Cloud: as decided.
            backend="" if decision.mode == common_pb2.ROUTING_MODE_REFLEX else decision.backend,
            model=decision.model,
            messages=[inference_pb2.ChatMessage(**m) for m in messages],
            max_tokens=spec.max_tokens,
            temperature=0.0 if self._number == 1 else RETRY_TEMPERATURE,
            json_schema=self._ctx.patch.schema_text,
            schema_name="rust_patch",
            mode=decision.mode,
            role=common_pb2.ROLE_IMPLEMENTER,
            session_id=spec.session_id,
            run_id=spec.run_id,
            decision_id=decision.decision_id,
            attempt=self._number,
            fallback_reason=enum_name(common_pb2.RoutingReason, decision.reason)
            if decision.is_fallback
            else "",
        )
        if self._number > 1:
            # A retry must be able to differ from the attempt before it.
            request.seed = self._number
        started = time.perf_counter()
        try:
            reply = await self._ctx.inference.complete(request, self._ctx.model_timeout_s)
        finally:
            self._timing.model_ms = (time.perf_counter() - started) * 1000
        self._ctx.report.event(model_call=model_call(reply, decision))
        return reply

    def _validate(self, reply: inference_pb2.CompleteReply) -> list[PatchEdit]:
        """The reply's edits: a JSON document under the patch schema (PatchRejected if not)."""
        if not reply.schema_valid:
            raise PatchRejected(
                "invalid_json",
                reply.validation_error or "the reply does not match the patch schema",
            )
        return parse_patch(reply.content, self._ctx.patch.schema)

    async def _apply(
        self, decision: router_pb2.RoutingDecision, edits: list[PatchEdit]
    ) -> tuple[dict[str, str], dict[str, bytes | None]]:
        """The edits planned against the files and written, whole or not at all
        (PatchRejected: nothing written); the new contents and what they
        replaced, for a revert."""
        scratch = self._ctx.scratch
        await self._ctx.disk.read_ahead(scratch, (e.file for e in edits))
        planned = plan_patch(
            edits, scratch.resolve, scratch.read_text, self._ctx.spec.allow_create_files
        )
        previous = scratch.write(planned)
        self._ctx.report.event(
            patch_applied=patchloop_pb2.PatchApplied(
                source=MODE_SOURCE.get(decision.mode, patchloop_pb2.FIX_SOURCE_UNSPECIFIED),
                edits=len(edits),
                files=sorted(planned),
            )
        )
        return planned, previous

    async def _keep_or_revert(
        self,
        decision: router_pb2.RoutingDecision,
        reply: inference_pb2.CompleteReply,
        after: CompileOutcome,
        edits: list[PatchEdit],
        planned: dict[str, str],
        previous: dict[str, bytes | None],
    ) -> AttemptResult:
        """A patch that did not fix the build: kept only if it is progress
        (progress.py), and recorded as a failed attempt either way."""
        progress = judge_patch(self._before, after)
        if not progress.kept:
            # Back to the last good state (never keep a new error such as
            # broken syntax): the next prompt then repeats this one's prefix
            # and hits the server's cache.
            self._ctx.scratch.restore(previous)
        reason = "build_timeout" if after.result.timed_out else "still_failing"
        self._failed(
            decision,
            reason,
            progress.detail,
            reply=reply,
            after=after,
            edits=len(edits),
            files=sorted(planned),
            kept=progress.kept,
            new_errors=list(progress.new_errors),
        )
        state = after if progress.kept else self._before
        return AttemptResult(state, reason=f"{reason}: {progress.detail}")

    # -- how it ended ----------------------------------------------------------

    def _ends_run(
        self, outcome: patchloop_pb2.Outcome.ValueType, what: str, reason: str
    ) -> AttemptResult:
        self._ctx.report.note(f"{what}: {reason}")
        return AttemptResult(self._before, ends_run=outcome, reason=reason)

    def _model_failed(
        self, decision: router_pb2.RoutingDecision, exc: ModelCallFailed
    ) -> AttemptResult:
        self._ctx.report.event(
            model_call=patchloop_pb2.ModelCall(
                backend=decision.backend, model=decision.model, mode=decision.mode, error=str(exc)
            )
        )
        return AttemptResult(self._before, reason=self._failed(decision, "model_error", str(exc)))

    def _rejected(
        self,
        decision: router_pb2.RoutingDecision,
        reply: inference_pb2.CompleteReply,
        rejected: PatchRejected,
    ) -> AttemptResult:
        self._ctx.report.event(
            patch_rejected=patchloop_pb2.PatchRejected(
                reason=rejected.reason, detail=rejected.detail
            )
        )
        reason = self._failed(decision, rejected.reason, rejected.detail, reply=reply)
        return AttemptResult(self._before, reason=reason)

    def _fixed(
        self,
        decision: router_pb2.RoutingDecision,
        reply: inference_pb2.CompleteReply,
        after: CompileOutcome,
        edits: list[PatchEdit],
        planned: dict[str, str],
    ) -> AttemptResult:
        self._record(
            decision,
            success=True,
            reason="",
            reply=reply,
            after=after,
            edits=len(edits),
            files=sorted(planned),
        )
        return AttemptResult(after, fixed=True)

    def _read_quietly(self, rel: str) -> str | None:
        try:
            return self._ctx.scratch.read_text(rel)
        except PatchRejected:
            return None

    def _failed(
        self, decision: router_pb2.RoutingDecision, reason: str, detail: str, **record: Any
    ) -> str:
        """Remember the failure for the next prompt and record the attempt."""
        self._ctx.feedback.append(FailedAttempt(self._number, reason, detail[:300]))
        self._record(decision, success=False, reason=reason, detail=detail[:500], **record)
        return f"{reason}: {detail}"

    def _record(
        self,
        decision: router_pb2.RoutingDecision,
        *,
        success: bool,
        reason: str,
        reply: inference_pb2.CompleteReply | None = None,
        after: CompileOutcome | None = None,
        **payload: Any,
    ) -> None:
        """The attempt's PATCH_ATTEMPT event."""
        before, timing = self._before, self._timing
        fields: dict[str, Any] = {}
        details: dict[str, Any] = {
            "errors_before": before.error_count,
            "errors_after": after.error_count if after else before.error_count,
            "decision_id": decision.decision_id,
            "routing_reason": enum_name(common_pb2.RoutingReason, decision.reason),
            "timing": timing.summary(),
            **payload,
        }
        if reply is not None:
            usage, t = reply.usage, reply.timing
            fields.update(
                json_valid=reply.schema_valid,
                latency_ms=t.latency_ms,
                ttft_ms=t.ttft_ms if t.HasField("ttft_ms") else None,
                tokens_per_s=t.tokens_per_s,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                cached_tokens=usage.cached_tokens if usage.HasField("cached_tokens") else None,
            )
            details["cache_reuse"] = cache_reuse(reply)
            details["call_id"] = reply.call_id
        else:
            # No reply (timeout, cooling down, connection error): an error,
            # not a schema failure, so json_valid stays unset.
            fields.update(latency_ms=timing.model_ms)
        self._ctx.report.capsule(
            common_pb2.EVENT_TYPE_PATCH_ATTEMPT,
            mode=decision.mode,
            model=(reply.model if reply is not None and reply.model else decision.model),
            backend=(reply.backend if reply is not None and reply.backend else decision.backend),
            is_fallback=decision.is_fallback,
            success=success,
            attempt=self._number,
            reason=reason,
            payload=details,
            **fields,
        )


def cache_reuse(reply: inference_pb2.CompleteReply) -> float | None:
    usage = reply.usage
    if not usage.HasField("cached_tokens") or usage.prompt_tokens == 0:
        return None
    return round(usage.cached_tokens / usage.prompt_tokens, 4)


def model_call(
    reply: inference_pb2.CompleteReply, decision: router_pb2.RoutingDecision
) -> patchloop_pb2.ModelCall:
    """The ModelCall event of a reply, for the caller."""
    call = patchloop_pb2.ModelCall(
        backend=reply.backend or decision.backend,
        model=reply.model or decision.model,
        mode=decision.mode,
        schema_valid=reply.schema_valid,
        attempts=reply.attempts,
        error=reply.validation_error,
    )
    call.usage.CopyFrom(reply.usage)
    call.timing.CopyFrom(reply.timing)
    reuse = cache_reuse(reply)
    if reuse is not None:
        call.cache_reuse = reuse
    return call
