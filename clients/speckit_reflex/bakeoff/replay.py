"""Replay: captured LLMCall requests (prompts and schemas exactly as recorded
under capture.mode = full_io) resent to a candidate model, and compared.

Figures per side (recorded, candidate): schema validity, latency and TTFT,
tokens; for patch requests (schema `rust_patch`) of a run whose workspace
was captured, whether the reply's patch, applied to the captured state,
builds and passes the verify step (PatchLoop.CheckPatch, in its sandbox).
Both sides' patches are judged the same way, so the comparison is fair.
The candidate is judged against the promotion thresholds with the bakeoff's
statuses: pass, fail, not_judged (never a pass without data).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict

from speckit_reflex.contract import percentile
from speckit_reflex.v1 import common_pb2, inference_pb2

REPLAY_SESSION_PREFIX = "replay:"
PATCH_SCHEMA = "rust_patch"


@dataclass(frozen=True)
class CapturedCall:
    """One LLMCall event whose request was stored in full."""

    event: common_pb2.Event
    request: dict[str, Any]

    @property
    def is_patch(self) -> bool:
        return str(self.params.get("schema_name", "")) == PATCH_SCHEMA

    @property
    def params(self) -> dict[str, Any]:
        params = self.request.get("params", {})
        return params if isinstance(params, dict) else {}

    def resendable(self) -> bool:
        """Whether the stored document is a request the adapter could have sent:
        events are written by any token holder and a document is any JSON."""
        try:
            self.to_request("m", "")
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError):
            return False
        return True

    def to_request(self, model: str, backend: str) -> inference_pb2.CompleteRequest:
        """The recorded request, re-addressed to the candidate (prompts and schema unchanged)."""
        p = self.params
        req = inference_pb2.CompleteRequest(
            model=model,
            backend=backend,
            messages=[
                inference_pb2.ChatMessage(role=str(m["role"]), content=str(m["content"]))
                for m in self.request.get("messages", [])
            ],
            max_tokens=int(p.get("max_tokens", 0) or 0),
            json_schema=str(p.get("json_schema", "")),
            schema_name=str(p.get("schema_name", "")),
            # Not the recorded route: the candidate is reached by name (and backend).
            mode=common_pb2.ROUTING_MODE_UNSPECIFIED if backend else common_pb2.ROUTING_MODE_REFLEX,
            role=self.event.role,
            session_id=f"{REPLAY_SESSION_PREFIX}{self.event.id}"[:128],
            attempt=self.event.attempt,
        )
        if "temperature" in p:
            req.temperature = float(p["temperature"])
        if "seed" in p:
            req.seed = int(p["seed"])
        return req


def captured_calls(events: list[common_pb2.Event]) -> tuple[list[CapturedCall], int]:
    """LLMCall events replayable as recorded (newest first), and how many were
    not (captured under hash or none: no prompt stored). Replays are left out."""
    calls: list[CapturedCall] = []
    not_captured = 0
    for ev in events:
        if ev.session_id.startswith(REPLAY_SESSION_PREFIX):
            continue
        request = MessageToDict(ev.request) if ev.HasField("request") else {}
        call = CapturedCall(ev, request)
        if ev.capture_mode != "full_io" or not request.get("messages") or not call.resendable():
            not_captured += 1
            continue
        calls.append(call)
    calls.sort(key=lambda c: (c.event.time.ToMicroseconds(), c.event.id), reverse=True)
    return calls, not_captured


@dataclass
class Side:
    """What one side (recorded or candidate) did on a call."""

    replied: bool
    schema_valid: bool | None
    latency_ms: float | None
    ttft_ms: float | None
    prompt_tokens: int
    completion_tokens: int
    tokens_per_s: float | None
    content: str = ""
    error: str = ""
    #: patch calls: "verified", "builds", "fails", "rejected: ...", or "not_judged: why"
    patch: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "replied": self.replied,
            "schema_valid": self.schema_valid,
            "latency_ms": _r(self.latency_ms),
            "ttft_ms": _r(self.ttft_ms),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "tokens_per_s": _r(self.tokens_per_s),
            "error": self.error or None,
            "patch": self.patch or None,
        }


def recorded_side(call: CapturedCall) -> Side:
    ev = call.event
    response = MessageToDict(ev.response) if ev.HasField("response") else {}
    replied = bool(response.get("finish_reason"))
    return Side(
        replied=replied,
        schema_valid=ev.json_valid if ev.HasField("json_valid") else None,
        latency_ms=ev.latency_ms if replied else None,
        ttft_ms=ev.ttft_ms if ev.HasField("ttft_ms") else None,
        prompt_tokens=ev.prompt_tokens,
        completion_tokens=ev.completion_tokens,
        tokens_per_s=ev.tokens_per_s or None,
        content=str(response.get("content", "")),
        error="" if replied else (ev.reason or "no reply"),
    )


def candidate_side(reply: inference_pb2.CompleteReply | None, error: str, schema: bool) -> Side:
    if reply is None:
        return Side(False, None, None, None, 0, 0, None, error=error or "no reply")
    t, u = reply.timing, reply.usage
    return Side(
        replied=True,
        schema_valid=reply.schema_valid if schema else None,
        latency_ms=t.latency_ms,
        ttft_ms=t.ttft_ms if t.HasField("ttft_ms") else None,
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        tokens_per_s=t.tokens_per_s or None,
        content=reply.content,
    )


def _r(x: float | None, digits: int = 1) -> float | None:
    return None if x is None else round(x, digits)


@dataclass
class ReplayedCall:
    call: CapturedCall
    recorded: Side
    candidate: Side

    def to_json(self) -> dict[str, Any]:
        ev = self.call.event
        return {
            "call_id": ev.id,
            "run_id": ev.run_id or None,
            "attempt": ev.attempt,
            "time": ev.time.ToJsonString(),
            "model": ev.model,
            "schema": self.call.params.get("schema_name") or None,
            "recorded": self.recorded.to_json(),
            "candidate": self.candidate.to_json(),
        }


def side_figures(sides: list[Side]) -> dict[str, Any]:
    replies = [s for s in sides if s.replied]
    schema = [s for s in replies if s.schema_valid is not None]
    latencies = [s.latency_ms for s in replies if s.latency_ms is not None]
    ttfts = [s.ttft_ms for s in replies if s.ttft_ms is not None]
    rates = [s.tokens_per_s for s in replies if s.tokens_per_s]
    judged = [s for s in sides if s.patch and not s.patch.startswith("not_judged")]
    verified = [s for s in judged if s.patch == "verified"]
    return {
        "calls": len(sides),
        "replies": len(replies),
        "errors": len(sides) - len(replies),
        "schema_valid": sum(1 for s in schema if s.schema_valid),
        "json_compliance_rate": _r(100 * sum(1 for s in schema if s.schema_valid) / len(schema))
        if schema
        else None,
        "p50_latency_ms": _r(percentile(latencies, 0.5)),
        "p95_latency_ms": _r(percentile(latencies, 0.95)),
        "p50_ttft_ms": _r(percentile(ttfts, 0.5)),
        "p95_ttft_ms": _r(percentile(ttfts, 0.95)),
        "prompt_tokens": sum(s.prompt_tokens for s in replies),
        "completion_tokens": sum(s.completion_tokens for s in replies),
        "mean_tokens_per_s": _r(sum(rates) / len(rates)) if rates else None,
        "patches_judged": len(judged),
        "patches_verified": len(verified),
        "patch_success_rate": _r(100 * len(verified) / len(judged)) if judged else None,
    }


@dataclass
class Thresholds:
    p95_latency_ms: float
    success_parity_percent: float
    json_schema_compliance_percent: float
    absolute_success_percent: float | None
    min_samples: int

    @classmethod
    def from_policy(cls, policy: dict[str, Any]) -> Thresholds:
        """The thresholds of the policy snapshot the Router serves (GetPolicy).

        The snapshot carries every key with the policy's own defaults filled in;
        a snapshot without them is refused rather than judged against defaults
        of this module's own (ValueError naming the key)."""
        routing = policy.get("governance", {}).get("routing", {})
        t = routing.get("reflex", {}).get("thresholds", {})
        verdicts = routing.get("verdicts", {})

        def need(table: dict[str, Any], path: str, key: str) -> Any:
            if key not in table:
                raise ValueError(f"the policy snapshot has no {path}.{key}")
            return table[key]

        where = "routing.reflex.thresholds"
        return cls(
            p95_latency_ms=float(need(t, where, "p95_latency_ms")),
            success_parity_percent=float(need(t, where, "success_parity_percent")),
            json_schema_compliance_percent=float(need(t, where, "json_schema_compliance_percent")),
            absolute_success_percent=t.get("absolute_success_percent"),
            min_samples=int(need(verdicts, "routing.verdicts", "min_samples")),
        )


def _result(
    name: str,
    observed: float | None,
    required: float,
    comparison: str,
    n: int,
    min_n: int,
    why: str,
) -> dict[str, Any]:
    if observed is None or n < min_n:
        status = "not_judged"
        message = why if observed is None else f"{n} sample(s), fewer than the {min_n} required"
    else:
        ok = observed < required if comparison == "<" else observed >= required
        status = "pass" if ok else "fail"
        message = f"{observed:g} {comparison if ok else ('>=' if comparison == '<' else '<')} {required:g}"
    return {
        "name": name,
        "status": status,
        "observed": observed,
        "required": required,
        "comparison": comparison,
        "message": message,
    }


def judge(recorded: dict[str, Any], candidate: dict[str, Any], t: Thresholds) -> dict[str, Any]:
    """The candidate against the thresholds: pass only if every one passes."""
    results = [
        _result(
            "p95_latency_ms",
            candidate["p95_latency_ms"],
            t.p95_latency_ms,
            "<",
            candidate["replies"],
            t.min_samples,
            "no reply from the candidate",
        ),
        _result(
            "json_schema_compliance_percent",
            candidate["json_compliance_rate"],
            t.json_schema_compliance_percent,
            ">=",
            candidate["replies"],
            t.min_samples,
            "no schema-bound reply from the candidate",
        ),
    ]
    base = recorded["patch_success_rate"]
    judged = candidate["patches_judged"]
    if base:
        parity = _r(100 * (candidate["patch_success_rate"] or 0.0) / base)
        results.append(
            _result(
                "success_parity_percent",
                parity,
                t.success_parity_percent,
                ">=",
                judged,
                t.min_samples,
                "",
            )
        )
    elif t.absolute_success_percent is not None:
        results.append(
            _result(
                "success_percent",
                candidate["patch_success_rate"],
                float(t.absolute_success_percent),
                ">=",
                judged,
                t.min_samples,
                "no patch request could be judged against its captured workspace",
            )
        )
    else:
        results.append(
            _result(
                "success_parity_percent",
                None,
                t.success_parity_percent,
                ">=",
                judged,
                t.min_samples,
                "no baseline: the recorded replies fixed none of the judged patch requests "
                "(or none could be judged) and the policy has no absolute_success_percent",
            )
        )
    statuses = {r["status"] for r in results}
    status = "fail" if "fail" in statuses else "not_judged" if "not_judged" in statuses else "pass"
    return {"status": status, "passed": status == "pass", "results": results}


@dataclass
class ReplayReport:
    model: str
    backend: str
    since: str
    calls: list[ReplayedCall] = field(default_factory=list)
    not_captured: int = 0
    thresholds: Thresholds | None = None
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def to_json(self) -> dict[str, Any]:
        recorded = side_figures([c.recorded for c in self.calls])
        candidate = side_figures([c.candidate for c in self.calls])
        t = self.thresholds
        return {
            "kind": "reflex-replay",
            "generated_at": self.generated_at.isoformat(timespec="seconds"),
            "candidate": {"model": self.model, "backend": self.backend or None},
            "since": self.since,
            "calls_not_captured": self.not_captured,
            "recorded_models": sorted({c.call.event.model for c in self.calls}),
            "figures": {"recorded": recorded, "candidate": candidate},
            "verdict": judge(recorded, candidate, t) if t is not None else None,
            "thresholds": None if t is None else vars(t),
            "calls": [c.to_json() for c in self.calls],
        }


def _cell(x: Any) -> str:
    return "—" if x is None else str(x)


def report_markdown(doc: dict[str, Any]) -> str:
    rec, cand = doc["figures"]["recorded"], doc["figures"]["candidate"]
    verdict = doc["verdict"]
    lines = [
        "# Reflex replay report",
        "",
        f"Candidate `{doc['candidate']['model']}`"
        + (f" on backend `{doc['candidate']['backend']}`" if doc["candidate"]["backend"] else "")
        + f", replaying {rec['calls']} captured call(s) of the last {doc['since']} "
        f"(recorded by {', '.join(f'`{m}`' for m in doc['recorded_models']) or '—'}). "
        f"Generated {doc['generated_at']}.",
        "",
    ]
    if verdict is not None:
        lines += [f"## Verdict: **{verdict['status'].upper().replace('_', ' ')}**", ""]
        lines += ["| threshold | status | observed | required | why |", "|---|---|---|---|---|"]
        lines += [
            f"| {r['name']} | {r['status']} | {_cell(r['observed'])} | {r['comparison']} "
            f"{r['required']:g} | {r['message']} |"
            for r in verdict["results"]
        ]
        lines.append("")
    lines += ["## Figures", "", "| figure | recorded | candidate |", "|---|---|---|"]
    for key in (
        "calls",
        "replies",
        "errors",
        "json_compliance_rate",
        "p50_latency_ms",
        "p95_latency_ms",
        "p50_ttft_ms",
        "p95_ttft_ms",
        "prompt_tokens",
        "completion_tokens",
        "mean_tokens_per_s",
        "patches_judged",
        "patches_verified",
        "patch_success_rate",
    ):
        lines.append(f"| {key} | {_cell(rec[key])} | {_cell(cand[key])} |")
    if doc["calls_not_captured"]:
        lines += [
            "",
            f"{doc['calls_not_captured']} call(s) of the window were not captured in full "
            "(capture.mode was not full_io) and could not be replayed.",
        ]
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, doc: dict[str, Any]) -> tuple[Path, Path]:
    """reflex-replay-<timestamp>.json and .md in `out_dir` (beside the bakeoff reports)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    json_path = out_dir / f"reflex-replay-{stamp}.json"
    md_path = out_dir / f"reflex-replay-{stamp}.md"
    for path, text in (
        (json_path, json.dumps(doc, indent=2) + "\n"),
        (md_path, report_markdown(doc)),
    ):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return json_path, md_path
