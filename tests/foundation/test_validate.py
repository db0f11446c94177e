"""The shared field checks: each kind of hostile value is refused, naming the field."""

from __future__ import annotations

import math

import pytest

from speckit_reflex.errors import InvalidArgument
from speckit_reflex.runtime.validate import Items, Known, Range, Text, check_message
from speckit_reflex.v1 import capsule_pb2, common_pb2, inference_pb2, router_pb2


def _refused(msg, rules=None) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgument) as info:
        check_message(msg, rules)
    return info.value.message


def test_a_clean_message_passes() -> None:
    check_message(
        router_pb2.DecideRequest(
            stage=common_pb2.STAGE_IMPLEMENT, session_id="s-1", confidence=0.5
        ),
        {"session_id": Text(256, required=True), "confidence": Range(0, 1)},
    )


@pytest.mark.parametrize(
    ("msg", "rules", "starts"),
    [
        (router_pb2.DecideRequest(session_id="a\x00b"), None, "session_id: contains a NUL byte"),
        (
            router_pb2.DecideRequest(session_id="x" * 3000),
            {"session_id": Text(256)},
            "session_id: is 3000 characters",
        ),
        (
            router_pb2.DecideRequest(session_id="x" * 3000),
            None,
            "session_id: is 3000 characters long; the limit is 1024",
        ),
        (
            router_pb2.DecideRequest(),
            {"session_id": Text(required=True)},
            "session_id: is required",
        ),
        (router_pb2.DecideRequest(stage=99), None, "stage: 99 is not a known Stage"),  # type: ignore[arg-type]
        (
            router_pb2.DecideRequest(),
            {"role": Known(required=True)},
            "role: is required (ROLE_UNSPECIFIED",
        ),
        (
            router_pb2.DecideRequest(confidence=math.nan),
            None,
            "confidence: must be a finite number",
        ),
        (
            router_pb2.DecideRequest(confidence=2.0),
            {"confidence": Range(0, 1)},
            "confidence: must be between 0 and 1",
        ),
        (
            router_pb2.DecideRequest(attempt=2**32 - 1),
            None,
            "attempt: must be between 0 and 2147483647",
        ),
        (
            inference_pb2.CompleteRequest(messages=[{"role": "user"}] * 3),
            {"messages": Items(2)},
            "messages: has 3 items; the limit is 2",
        ),
        (
            inference_pb2.CompleteRequest(messages=[{"role": "user"}, {"role": "robot"}]),
            {"messages.role": Text(16, choices=frozenset({"user"}))},
            "messages[1].role: must be one of user",
        ),
        (
            inference_pb2.CompleteRequest(messages=[{"content": "ok"}, {"content": "\x00"}]),
            None,
            "messages[1].content: contains a NUL byte",
        ),
        (
            capsule_pb2.QueryEventsRequest(since={"seconds": 2**40}),
            None,
            "since: is outside the valid Timestamp range",
        ),
        (
            capsule_pb2.GetBakeoffStatsRequest(window={"start": {"seconds": 1, "nanos": -1}}),
            None,
            "window.start: is outside the valid Timestamp range",
        ),
    ],
)
def test_each_hostile_value_is_refused_naming_its_field(msg, rules, starts) -> None:  # type: ignore[no-untyped-def]
    assert _refused(msg, rules).startswith(starts)


def test_structs_must_have_a_storable_json_form() -> None:
    ev = common_pb2.Event()
    ev.payload.update({"a": {"b": "x\x00y"}})
    assert _refused(ev).startswith("payload.a.b: contains a NUL byte")
    ev = common_pb2.Event()
    ev.payload.update({"k\x00": 1})
    assert _refused(ev).startswith("payload: has a key containing a NUL byte")
    ev = common_pb2.Event()
    ev.payload.update({"n": [1, math.inf]})
    assert _refused(ev).startswith("payload.n[1]: must be a finite number")
    deep: dict = {}
    cur = deep
    for _ in range(40):
        cur["d"] = {}
        cur = cur["d"]
    ev = common_pb2.Event()
    ev.payload.update(deep)
    assert "nested deeper than" in _refused(ev)
