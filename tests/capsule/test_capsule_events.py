"""AppendEvents and QueryEvents on SQLite and PostgreSQL: idempotent replay,
bad input naming its index, capture modes, redaction, filters and paging."""

from __future__ import annotations

import json

import grpc
import pytest
from capsule_helpers import CLOUD, REFLEX, attempt, make_event

from speckit_reflex.capsule.core import MAX_BATCH
from speckit_reflex.clients.errors import error_of
from speckit_reflex.v1 import capsule_pb2, common_pb2

LLM_CALL = common_pb2.EVENT_TYPE_LLM_CALL
SECRET_KEY = "sk-proj-ABCDEFGHIJKLMNOPQRSTUV1234567890"
BEARER = "Bearer eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXRva2Vu.abcdefgh"


async def test_append_then_replay_is_not_stored_twice(capsule):
    events = [attempt(REFLEX, "m", 100.0 + i) for i in range(5)]
    first = await capsule.append_events(events)
    assert (first.inserted, first.duplicates) == (5, 0)
    replay = await capsule.append_events([*events[:3], attempt(CLOUD, "c", 9.0)])
    assert (replay.inserted, replay.duplicates) == (1, 3)
    stored = await capsule.all_events()
    assert len(stored) == 6
    assert len({e.id for e in stored}) == 6


async def test_duplicate_ids_inside_one_batch_count_once(capsule):
    ev = attempt(REFLEX, "m", 10.0)
    reply = await capsule.append_events([ev, ev, ev])
    assert (reply.inserted, reply.duplicates) == (1, 2)


async def test_round_trip_keeps_every_field(capsule):
    ev = make_event(
        LLM_CALL,
        time_us=1_780_000_000_123_456,
        role=common_pb2.ROLE_IMPLEMENTER,
        mode=REFLEX,
        model="qwen",
        backend="sglang-primary",
        stage=common_pb2.STAGE_IMPLEMENT,
        session_id="s1",
        run_id="r1",
        reason="healthy_and_thresholds_met",
        is_fallback=True,
        latency_ms=145.5,
        ttft_ms=12.25,
        prompt_tokens=900,
        completion_tokens=80,
        cached_tokens=0,
        tokens_per_s=41.5,
        success=False,
        json_valid=True,
        attempt=2,
        policy_hash="ab" * 32,
        bakeoff_run_id="b1",
        task_id="t1",
        payload={"errors": [{"code": "E0382", "line": 7}], "note": None},
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        span_id="00f067aa0ba902b7",
    )
    await capsule.append_events([ev])
    (got,) = (await capsule.query_events(session_id="s1")).events
    assert got.time.ToMicroseconds() == 1_780_000_000_123_456
    assert got.cached_tokens == 0 and got.HasField("cached_tokens")  # 0 is not "unknown"
    assert got.success is False and got.HasField("success")
    for name in (
        "role",
        "mode",
        "model",
        "backend",
        "stage",
        "run_id",
        "reason",
        "is_fallback",
        "latency_ms",
        "ttft_ms",
        "prompt_tokens",
        "completion_tokens",
        "tokens_per_s",
        "json_valid",
        "attempt",
        "policy_hash",
        "bakeoff_run_id",
        "task_id",
        "trace_id",
        "span_id",
    ):
        assert getattr(got, name) == getattr(ev, name), name
    assert dict(got.payload)["errors"][0]["code"] == "E0382"
    assert got.capture_mode == "hash"  # the policy default


async def test_unknown_cached_tokens_stay_unknown(capsule):
    await capsule.append_events([make_event(LLM_CALL, session_id="u", prompt_tokens=10)])
    (got,) = (await capsule.query_events(session_id="u")).events
    assert (
        not got.HasField("cached_tokens")
        and not got.HasField("ttft_ms")
        and not got.HasField("success")
    )


def _stamped(seconds: int) -> common_pb2.Event:
    ev = make_event()
    ev.time.seconds = seconds
    return ev


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (make_event(id=""), "id: is required"),
        (make_event(common_pb2.EVENT_TYPE_UNSPECIFIED), "unspecified"),
        (make_event(77), "unknown (77)"),
        (make_event(latency_ms=float("nan")), "latency_ms"),
        (make_event(id="x" * 200), "id: is 200 characters long; the limit is 128"),
        (make_event(session_id="a\x00b"), "session_id: contains a NUL byte"),
        (make_event(session_id="s" * 3000), "session_id: is 3000 characters long"),
        (make_event(reason="r\x00"), "reason: contains a NUL byte"),
        (make_event(prompt_tokens=2**32 - 1), "prompt_tokens: must be at most 2147483647"),
        (_stamped(2**40), "time: is outside the valid Timestamp range"),
        (make_event(role=99), "role (id "),
        (make_event(LLM_CALL, payload={"k": "v\x00"}), "malformed"),
        (make_event(LLM_CALL, request={"k\x00": 1}), "malformed"),
        (
            make_event(trace_id="4BF92F3577B34DA6A3CE929D0E0E4736", span_id="00f067aa0ba902b7"),
            "trace_id must be 32",
        ),
        (make_event(trace_id="0" * 32, span_id="00f067aa0ba902b7"), "trace_id must be 32"),
        (make_event(trace_id="4bf92f3577b34da6a3ce929d0e0e4736"), "span_id must be 16"),
        (make_event(span_id="00f067aa0ba902b7"), "trace_id must be 32"),
    ],
)
async def test_invalid_event_names_its_index_and_stores_nothing(capsule, bad, words):
    batch = [attempt(REFLEX, "m", 1.0), attempt(REFLEX, "m", 2.0), bad]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await capsule.append_events(batch)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "events[2]" in err.value.details() and words in err.value.details()
    # For programs: ErrorInfo INVALID_FIELD whose metadata names the event (and its field).
    info = error_of(err.value)
    assert info.reason == common_pb2.ERROR_REASON_INVALID_FIELD, info
    assert info.metadata["field"].startswith("events[2]"), info.metadata
    assert await capsule.all_events() == []


async def test_malformed_payload_is_invalid_argument(capsule):
    ev = make_event(LLM_CALL)
    ev.payload.fields["x"].number_value = float("inf")
    no_kind = make_event(LLM_CALL)
    no_kind.payload.fields["y"].CopyFrom(
        no_kind.payload.fields["y"].__class__()
    )  # a Value with no kind
    for i, bad in enumerate((ev, no_kind)):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await capsule.append_events([make_event(LLM_CALL), bad])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, i
        assert "events[1].payload" in err.value.details() and "malformed" in err.value.details()
    assert await capsule.all_events() == []


async def test_oversized_batch_is_refused_and_server_keeps_serving(capsule):
    batch = [make_event(LLM_CALL, id=f"e{i}") for i in range(MAX_BATCH + 1)]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await capsule.append_events(batch)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "split it" in err.value.details()
    assert (await capsule.append_events(batch[:MAX_BATCH])).inserted == MAX_BATCH


def _llm_call(**kw):
    return make_event(
        LLM_CALL,
        session_id="cap",
        mode=REFLEX,
        request={
            "model": "qwen",
            "api_key": SECRET_KEY,
            "headers": {"Authorization": BEARER, "X-Api-Key": "k" * 12},
            "messages": [
                {"role": "user", "content": f"my key is {SECRET_KEY}, token={'t' * 20} fix E0382"}
            ],
            "max_tokens": 256,
        },
        response={
            "choices": [{"message": {"content": '{"edits": []}'}}],
            "usage": {"prompt_tokens": 12},
        },
        payload={
            "endpoint": "http://x",
            "authorization": BEARER,
            "password": "hunter2hunter2",
            "note": BEARER,
        },
        **kw,
    )


def _no_secret_anywhere(ev: common_pb2.Event) -> None:
    text = json.dumps([dict(ev.payload), str(ev.request), str(ev.response)], default=str)
    for secret in (SECRET_KEY, "eyJhbGciOiJIUzI1NiJ9", "hunter2", "k" * 12, "t" * 20):
        assert secret not in text


@pytest.mark.parametrize("mode", ["full_io", "hash", "none"])
async def test_capture_modes_store_what_they_promise_and_never_a_secret(start_capsule, mode):
    _, capsule = await start_capsule({"capture.mode": mode})
    await capsule.append_events([_llm_call()])
    (got,) = (await capsule.query_events(session_id="cap")).events
    assert got.capture_mode == mode
    _no_secret_anywhere(got)
    assert dict(got.payload)["authorization"] == "[REDACTED]"
    assert dict(got.payload)["note"] == "Bearer [REDACTED]"
    if mode == "full_io":
        req = json.loads(json.dumps(dict(got.request), default=lambda s: dict(s)))
        assert req["api_key"] == "[REDACTED]"
        assert req["max_tokens"] == 256  # a "tokens" field is not a secret
        assert (
            got.request.fields["headers"].struct_value.fields["Authorization"].string_value
            == "[REDACTED]"
        )
        content = (
            got.request.fields["messages"]
            .list_value.values[0]
            .struct_value.fields["content"]
            .string_value
        )
        assert content == "my key is [REDACTED], token=[REDACTED] fix E0382"
        assert got.response.fields["usage"].struct_value.fields["prompt_tokens"].number_value == 12
    else:
        assert len(got.request.fields) == 0 and len(got.response.fields) == 0
    if mode == "none":
        assert got.request_sha256 == "" and got.response_sha256 == ""
    else:
        assert len(got.request_sha256) == 64 and len(got.response_sha256) == 64


async def test_hash_is_of_the_redacted_request(start_capsule):
    """Two requests that differ only in their key hash the same: the key never entered the hash."""
    _, capsule = await start_capsule({"capture.mode": "hash"})
    a, b = _llm_call(), _llm_call()
    b.request.fields["api_key"].string_value = "sk-another-key-0123456789"
    await capsule.append_events([a, b])
    got = (await capsule.query_events(session_id="cap")).events
    assert got[0].request_sha256 == got[1].request_sha256


async def test_query_filters_and_pages(capsule):
    base = 1_780_000_000_000_000
    events = [
        make_event(
            LLM_CALL if i % 2 else common_pb2.EVENT_TYPE_ROUTING_DECISION,
            time_us=base + i * 1000,
            mode=REFLEX if i % 3 else CLOUD,
            model=f"m{i % 2}",
            role=common_pb2.ROLE_IMPLEMENTER,
            session_id="s" if i < 20 else "other",
            run_id=f"r{i % 4}",
        )
        for i in range(25)
    ]
    await capsule.append_events(events)
    seen, token, pages = [], "", 0
    while True:
        page = await capsule.query_events(page_size=7, page_token=token, session_id="s")
        seen += [e.id for e in page.events]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == [e.id for e in events[:20]] and pages == 3
    llm = await capsule.all_events(type=LLM_CALL)
    assert [e.id for e in llm] == [e.id for e in events if e.type == LLM_CALL]
    cloud_m0 = await capsule.all_events(mode=CLOUD, model="m0")
    assert {e.id for e in cloud_m0} == {e.id for e in events if e.mode == CLOUD and e.model == "m0"}
    ts = capsule_pb2.QueryEventsRequest()
    ts.since.FromMicroseconds(base + 5000)
    ts.until.FromMicroseconds(base + 8000)
    window = await capsule.all_events(since=ts.since, until=ts.until, run_id="r1")
    assert [e.id for e in window] == [events[5].id]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await capsule.query_events(page_token="garbage!")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
