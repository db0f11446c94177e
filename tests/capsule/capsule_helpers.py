"""Builders of Capsule test data (imported by the Capsule tests)."""

from __future__ import annotations

import uuid
from typing import Any

from speckit_reflex.v1 import common_pb2

REFLEX, CLOUD = common_pb2.ROUTING_MODE_REFLEX, common_pb2.ROUTING_MODE_CLOUD
T0_US = 1_780_000_000_000_000  # a fixed "now" for window tests (2026-05-28)


def make_event(
    event_type: int = common_pb2.EVENT_TYPE_PATCH_ATTEMPT,
    *,
    time_us: int | None = None,
    **fields: Any,
) -> common_pb2.Event:
    """An event with a fresh id; dict payload/request/response become Structs."""
    ev = common_pb2.Event(id=fields.pop("id", str(uuid.uuid4())), type=event_type)  # type: ignore[arg-type]
    if time_us is not None:
        ev.time.FromMicroseconds(time_us)
    for key, value in fields.items():
        if key in ("payload", "request", "response"):
            getattr(ev, key).update(value)
        else:
            setattr(ev, key, value)
    return ev


def attempt(
    mode: int,
    model: str,
    latency_ms: float,
    success: bool = True,
    json_valid: bool = True,
    **fields: Any,
) -> common_pb2.Event:
    """A PatchAttempt event as PatchLoop writes it."""
    return make_event(
        common_pb2.EVENT_TYPE_PATCH_ATTEMPT,
        mode=mode,
        model=model,
        latency_ms=latency_ms,
        success=success,
        json_valid=json_valid,
        role=common_pb2.ROLE_IMPLEMENTER,
        **fields,
    )
