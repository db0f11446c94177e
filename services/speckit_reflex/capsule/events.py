"""Events in and out: validation, redaction and capture on ingest, protos on read.

Ingest is the hot path (≥ 50,000 events/s), so a proto becomes a plain tuple
in COLUMNS order with direct attribute reads; Structs are walked by hand
rather than through json_format, which is several times slower.
"""

from __future__ import annotations

import math
from typing import Any

from google.protobuf import struct_pb2

from speckit_reflex.capsule.capture import capture
from speckit_reflex.errors import InvalidArgument
from speckit_reflex.runtime.redact import has_secret, redact, redact_text
from speckit_reflex.runtime.validate import INT32_MAX, JSON_DEPTH_MAX, NUL, text, timestamp_us
from speckit_reflex.v1 import common_pb2

MAX_ID_LEN = 128
MAX_JSON_DEPTH = JSON_DEPTH_MAX
# Text columns of an event and their bounds. session_id is indexed: a btree
# entry over ~2,700 bytes is refused by PostgreSQL, so it stays far below.
TEXT_LIMITS = (
    ("model", 256),
    ("backend", 128),
    ("session_id", 256),
    ("run_id", 128),
    ("reason", 4096),
    ("policy_hash", 128),
    ("bakeoff_run_id", 128),
    ("task_id", 256),
)

VALID_TYPES = frozenset(
    v for v in common_pb2.EventType.values() if v != common_pb2.EVENT_TYPE_UNSPECIFIED
)
VALID_ROLES = frozenset(common_pb2.Role.values())
VALID_MODES = frozenset(common_pb2.RoutingMode.values())
VALID_STAGES = frozenset(common_pb2.Stage.values())

# Column order of a stored event; the ingest tuple and COPY follow it.
COLUMNS = (
    "id",
    "type",
    "time_us",
    "role",
    "mode",
    "model",
    "backend",
    "stage",
    "session_id",
    "run_id",
    "reason",
    "is_fallback",
    "latency_ms",
    "ttft_ms",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "tokens_per_s",
    "success",
    "json_valid",
    "attempt",
    "policy_hash",
    "bakeoff_run_id",
    "task_id",
    "payload",
    "request",
    "response",
    "capture_mode",
    "request_sha256",
    "response_sha256",
    "trace_id",
    "span_id",
)
_HEX_CHARS = "0123456789abcdef"
_INF = math.inf


class MalformedJson(ValueError):
    """A Struct that has no JSON form (NaN, a Value without a kind, too deep)."""


def _value(v: struct_pb2.Value, depth: int) -> Any:
    kind = v.WhichOneof("kind")
    if kind == "string_value":
        sv = v.string_value
        if NUL in sv:  # PostgreSQL's JSONB refuses \u0000
            raise MalformedJson("a string contains a NUL byte")
        return sv
    if kind == "number_value":
        n = v.number_value
        if not math.isfinite(n):
            raise MalformedJson(f"number {n} has no JSON form")
        return n
    if kind == "bool_value":
        return v.bool_value
    if kind == "null_value":
        return None
    if kind == "struct_value":
        return struct_to_dict(v.struct_value, depth + 1)
    if kind == "list_value":
        if depth >= MAX_JSON_DEPTH:
            raise MalformedJson(f"nested deeper than {MAX_JSON_DEPTH} levels")
        return [_value(x, depth + 1) for x in v.list_value.values]
    raise MalformedJson("a value has no kind set")


def struct_to_dict(s: struct_pb2.Struct, depth: int = 0) -> dict[str, Any]:
    """A Struct as a plain dict; raises MalformedJson if it has no JSON form."""
    if depth >= MAX_JSON_DEPTH:
        raise MalformedJson(f"nested deeper than {MAX_JSON_DEPTH} levels")
    out = {k: _value(v, depth) for k, v in s.fields.items()}
    if any(NUL in k for k in out):
        raise MalformedJson("a key contains a NUL byte")
    return out


def dict_to_struct(d: dict[str, Any] | None, out: struct_pb2.Struct) -> None:
    if d:
        out.update(d)


def _sha_or_empty(given: str) -> str:
    # str.strip with a character set runs in C; set(given) built a set per call.
    return given if len(given) == 64 and not given.strip(_HEX_CHARS) else ""


def _trace_context(ev: common_pb2.Event, index: int) -> tuple[str, str]:
    """The event's W3C trace and span id: both lower-case hex of their length, or both empty."""
    trace_id, span_id = ev.trace_id, ev.span_id
    for name, given, size in (("trace_id", trace_id, 32), ("span_id", span_id, 16)):
        if len(given) != size or given.strip(_HEX_CHARS) or not given.strip("0"):
            raise InvalidArgument(
                f"events[{index}] (id {ev.id}): {name} must be {size} lower-case hex characters, not all zero",
                field=f"events[{index}].{name}",
            )
    return trace_id, span_id


def _not_finite(name: str, value: float, index: int) -> InvalidArgument:
    return InvalidArgument(
        f"events[{index}].{name}: must be a finite number >= 0 (got {value})",
        field=f"events[{index}].{name}",
    )


def _documents(
    ev: common_pb2.Event, index: int, capture_mode: str
) -> tuple[Any, Any, Any, str, str]:
    """Redacted payload, captured request/response and their hashes."""
    eid = ev.id
    has = ev.HasField
    try:
        payload = redact(struct_to_dict(ev.payload)) if has("payload") else None
        request = redact(struct_to_dict(ev.request)) if has("request") else None
        response = redact(struct_to_dict(ev.response)) if has("response") else None
    except MalformedJson as exc:
        raise InvalidArgument(
            f"events[{index}].payload/request/response (id {eid}): malformed: {exc}",
            field=f"events[{index}]",
        ) from None
    stored_req, req_sha = capture(request, capture_mode)
    stored_resp, resp_sha = capture(response, capture_mode)
    return payload, stored_req, stored_resp, req_sha, resp_sha


def _texts(ev: common_pb2.Event, index: int) -> list[str]:
    """The event's text columns in TEXT_LIMITS order: storable, and redacted.

    One join answers "any NUL, any secret?" for all of them at once: this
    runs for every ingested event.
    """
    values = [
        ev.model,
        ev.backend,
        ev.session_id,
        ev.run_id,
        ev.reason,
        ev.policy_hash,
        ev.bakeoff_run_id,
        ev.task_id,
    ]
    joined = "\n".join(values)
    if NUL in joined or any(
        len(v) > limit for v, (_, limit) in zip(values, TEXT_LIMITS, strict=True)
    ):
        for v, (name, limit) in zip(values, TEXT_LIMITS, strict=True):
            text(v, f"events[{index}].{name}", limit)
    if has_secret(joined):
        values = [redact_text(v) for v in values]
    return values


def event_to_row(
    ev: common_pb2.Event, index: int, capture_mode: str, now_us: int
) -> tuple[Any, ...]:
    """Validate one event and return its row tuple (COLUMNS order).

    Raises InvalidArgument naming `index`, the event's place in its batch.
    This runs once per ingested event: attribute reads are bound once, and
    an event without documents skips the Struct walk and capture entirely.
    """
    eid = text(ev.id, f"events[{index}].id", MAX_ID_LEN, required=True)
    etype = ev.type
    if etype not in VALID_TYPES:
        what = "unspecified" if etype == 0 else f"unknown ({etype})"
        raise InvalidArgument(
            f"events[{index}].type (id {eid}): event type is {what}", field=f"events[{index}].type"
        )
    role, mode, stage = ev.role, ev.mode, ev.stage
    if role not in VALID_ROLES or mode not in VALID_MODES or stage not in VALID_STAGES:
        name, value = next(
            (n, v)
            for n, v, ok in (
                ("role", role, VALID_ROLES),
                ("mode", mode, VALID_MODES),
                ("stage", stage, VALID_STAGES),
            )
            if v not in ok
        )
        raise InvalidArgument(
            f"events[{index}].{name} (id {eid}): {value} is not a known value",
            field=f"events[{index}].{name}",
        )
    texts = _texts(ev, index)
    ints = (ev.prompt_tokens, ev.completion_tokens, ev.cached_tokens, ev.attempt)
    if max(ints) > INT32_MAX:  # the database's INTEGER is signed 32-bit
        name = ("prompt_tokens", "completion_tokens", "cached_tokens", "attempt")[
            ints.index(max(ints))
        ]
        raise InvalidArgument(
            f"events[{index}].{name}: must be at most {INT32_MAX} (got {max(ints)})",
            field=f"events[{index}].{name}",
        )
    has = ev.HasField
    time_us = timestamp_us(ev.time, f"events[{index}].time") if has("time") else now_us
    # Chained comparisons reject NaN, infinities and negatives in one test.
    latency = ev.latency_ms
    if not 0.0 <= latency < _INF:
        raise _not_finite("latency_ms", latency, index)
    ttft = None
    if has("ttft_ms"):
        ttft = ev.ttft_ms
        if not 0.0 <= ttft < _INF:
            raise _not_finite("ttft_ms", ttft, index)
    tps = ev.tokens_per_s
    if not 0.0 <= tps < _INF:
        raise _not_finite("tokens_per_s", tps, index)
    if has("payload") or has("request") or has("response"):
        payload, stored_req, stored_resp, req_sha, resp_sha = _documents(ev, index, capture_mode)
    else:
        payload = stored_req = stored_resp = None
        req_sha = resp_sha = ""
    if capture_mode != "none":
        # A caller that already hashed (and dropped) the body may send the hash.
        req_sha = req_sha or _sha_or_empty(ev.request_sha256)
        resp_sha = resp_sha or _sha_or_empty(ev.response_sha256)
    trace_id, span_id = _trace_context(ev, index) if ev.trace_id or ev.span_id else ("", "")
    model, backend, session_id, run_id, reason, policy_hash, bakeoff_run_id, task_id = texts
    return (
        eid,
        etype,
        time_us,
        role,
        mode,
        model,
        backend,
        stage,
        session_id,
        run_id,
        reason,
        ev.is_fallback,
        latency,
        ttft,
        ev.prompt_tokens,
        ev.completion_tokens,
        ev.cached_tokens if has("cached_tokens") else None,
        tps,
        ev.success if has("success") else None,
        ev.json_valid if has("json_valid") else None,
        ev.attempt,
        policy_hash,
        bakeoff_run_id,
        task_id,
        payload,
        stored_req,
        stored_resp,
        capture_mode,
        req_sha,
        resp_sha,
        trace_id,
        span_id,
    )


def row_to_event(row: Any) -> common_pb2.Event:
    """A stored row (mapping with COLUMNS keys) as an Event proto."""
    ev = common_pb2.Event(
        id=row["id"],
        type=row["type"],
        role=row["role"],
        mode=row["mode"],
        model=row["model"],
        backend=row["backend"],
        stage=row["stage"],
        session_id=row["session_id"],
        run_id=row["run_id"],
        reason=row["reason"],
        is_fallback=bool(row["is_fallback"]),
        latency_ms=row["latency_ms"],
        prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"],
        tokens_per_s=row["tokens_per_s"],
        attempt=row["attempt"],
        policy_hash=row["policy_hash"],
        capture_mode=row["capture_mode"],
        request_sha256=row["request_sha256"],
        response_sha256=row["response_sha256"],
        bakeoff_run_id=row["bakeoff_run_id"],
        task_id=row["task_id"],
        trace_id=row["trace_id"],
        span_id=row["span_id"],
    )
    ev.time.FromMicroseconds(row["time_us"])
    for name in ("ttft_ms", "cached_tokens", "success", "json_valid"):
        if row[name] is not None:
            setattr(ev, name, row[name])
    dict_to_struct(row["payload"], ev.payload)
    dict_to_struct(row["request"], ev.request)
    dict_to_struct(row["response"], ev.response)
    return ev
