"""Failure modes of SGLang- and vLLM-shaped servers: each test asserts the
gRPC status and the reason recorded in the reply or the LLMCall event."""

from __future__ import annotations

import json
import logging
import time

import grpc
import pytest

from tests.waiting import eventually

from .conftest import backends_policy, wait_for_calls
from .test_complete_fakes import MESSAGES, SCHEMA


async def _rpc_error(coro) -> grpc.aio.AioRpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro
    return info.value


async def test_overload_503_fails_over_and_cools_down(fake_factory, adapter):
    primary = await fake_factory(kind="sglang", chat_mode="overloaded")
    fallback = await fake_factory(kind="vllm")
    llm, recorder, _ = await adapter(
        backends_policy(("sglang-a", "sglang", primary), ("vllm-b", "vllm", fallback))
    )

    reply = await llm.complete(MESSAGES, json_schema=SCHEMA, max_tokens=16, timeout=10)
    assert reply.schema_valid and reply.backend == "vllm-b"
    assert [(f.backend, f.reason) for f in reply.failovers] == [("sglang-a", "overloaded")]

    # During the cooldown the failed primary is not called again.
    calls_before = len(primary.chats())
    again = await llm.complete(MESSAGES, json_schema=SCHEMA, max_tokens=16, timeout=10)
    assert [(f.backend, f.reason) for f in again.failovers] == [("sglang-a", "cooling_down")]
    assert len(primary.chats()) == calls_before
    health = await llm.health("sglang-a")
    assert health.backends[0].cooling_down

    first, second = await wait_for_calls(recorder, 2)
    assert first.is_fallback and first.success and first.reason == "failover sglang-a=overloaded"
    assert first.payload["failovers"][0]["reason"] == "overloaded"
    assert second.reason == "failover sglang-a=cooling_down"


async def test_overload_503_on_the_only_backend_is_unavailable(fake_factory, adapter):
    fake = await fake_factory(kind="sglang", chat_mode="overloaded")
    llm, recorder, _ = await adapter(backends_policy(("sglang-a", "sglang", fake)))
    err = await _rpc_error(llm.complete(MESSAGES, max_tokens=8, timeout=10))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert err.details() == "all_backends_failed: sglang-a=overloaded"
    (event,) = await wait_for_calls(recorder, 1)
    assert not event.success and event.reason == "all_backends_failed: sglang-a=overloaded"


async def test_deadline_bounds_a_server_that_never_answers(fake_factory, adapter):
    """TARGETS #1: the caller's 2 s deadline, not the backend's 60 s timeout, ends
    the call (DEADLINE_EXCEEDED), and the upstream request is closed after it."""
    fake = await fake_factory(kind="vllm", chat_mode="hang")
    llm, recorder, _ = await adapter(backends_policy(("vllm-a", "vllm", fake), timeout_ms=60_000))
    started = time.monotonic()
    err = await _rpc_error(llm.complete(MESSAGES, max_tokens=8, timeout=2.0))
    elapsed = time.monotonic() - started
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # Limit: the 2 s deadline plus 8 s of margin for a loaded 2-core machine
    # (the call normally ends within a few ms of 2 s); still far below the
    # backend's 60 s timeout, which is what would end it if the deadline did not.
    assert elapsed <= 2.0 + 8.0, elapsed
    assert fake.requests[-1][1] == "/v1/chat/completions"
    # The adapter cancels the upstream request: the fake sees its client go
    # (within ms; 20 s allowed, still well before the backend's 60 s timeout).
    await eventually(lambda: fake.open_requests == 0, what="upstream request closed", timeout_s=20)
    (event,) = await wait_for_calls(recorder, 1)
    assert not event.success and event.reason.startswith("deadline_exceeded")


async def test_hang_after_headers_times_out_and_fails_over(fake_factory, adapter):
    stuck = await fake_factory(kind="sglang", chat_mode="hang_after_headers")
    good = await fake_factory(kind="vllm")
    llm, recorder, _ = await adapter(
        backends_policy(("sglang-a", "sglang", stuck), ("vllm-b", "vllm", good), timeout_ms=800)
    )
    reply = await llm.complete(MESSAGES, max_tokens=8, timeout=10)
    assert reply.backend == "vllm-b"
    assert [(f.backend, f.reason) for f in reply.failovers] == [("sglang-a", "timeout")]
    await eventually(lambda: stuck.open_requests == 0, what="timed-out upstream request closed")
    (event,) = await wait_for_calls(recorder, 1)
    assert event.reason == "failover sglang-a=timeout"


async def test_hang_after_headers_on_the_only_backend(fake_factory, adapter):
    stuck = await fake_factory(kind="sglang", chat_mode="hang_after_headers")
    llm, _, _ = await adapter(backends_policy(("sglang-a", "sglang", stuck), timeout_ms=800))
    err = await _rpc_error(llm.complete(MESSAGES, max_tokens=8, timeout=10))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert err.details() == "all_backends_failed: sglang-a=timeout"


@pytest.mark.parametrize("kind", ["sglang", "vllm"])
async def test_liar_health_is_caught_by_the_generation_probe(kind, fake_factory, adapter):
    """TARGETS #2: /health 200 while generation hangs -> unhealthy within one probe interval."""
    liar = await fake_factory(kind=kind)
    good = await fake_factory(kind="vllm")
    interval, probe_timeout = 1.0, 0.3
    llm, _, _ = await adapter(
        backends_policy(
            ("liar", kind, liar),
            ("good", "vllm", good),
            health={
                "probe_interval_s": interval,
                "probe_timeout_ms": int(probe_timeout * 1000),
                "cooldown_s": 0,
            },
        )
    )
    first = (await llm.health("liar", refresh=True)).backends[0]
    assert first.healthy and first.generation_ok

    liar.probe_hangs = True

    async def cached_status():  # type: ignore[no-untyped-def]
        return (await llm.health("liar")).backends[0]  # refreshed in the background only

    # Limit: the next background probe starts within one interval and gives up
    # after probe_timeout (1.3 s); 5 s of margin for the refresher task and the
    # fakes to be scheduled on a loaded 2-core machine. Without the generation
    # probe the liar stays healthy for ever.
    status = await eventually(
        cached_status,
        lambda st: not st.healthy,
        what="the liar marked unhealthy by the background probe",
        timeout_s=interval + probe_timeout + 5.0,
        interval_s=0.05,
    )
    assert status.reachable and status.model_listed and not status.generation_ok
    assert status.reason.startswith("generation_probe_failed: timeout")
    # Plain /health still says 200: only the generation probe sees the problem.
    # Failover now passes over the liar without calling it.
    calls = len(liar.chats())
    reply = await llm.complete(MESSAGES, max_tokens=8, timeout=10)
    assert reply.backend == "good"
    assert reply.failovers[0].backend == "liar" and reply.failovers[0].reason.startswith(
        "unhealthy (generation_probe_failed"
    )
    assert len(liar.chats()) == calls


async def test_json_only_in_reasoning_content_is_invalid(fake_factory, adapter):
    fake = await fake_factory(kind="sglang", reply="", reasoning='{"ok": true}')
    llm, recorder, _ = await adapter(backends_policy(("sglang-a", "sglang", fake), retries=1))
    reply = await llm.complete(MESSAGES, json_schema=SCHEMA, max_tokens=16, timeout=10)
    assert not reply.schema_valid and reply.content == ""
    assert reply.attempts == 2
    assert reply.validation_error.startswith("json_only_in_reasoning")
    (event,) = await wait_for_calls(recorder, 1)
    assert not event.success and not event.json_valid
    assert event.reason == "schema_invalid json_only_in_reasoning"
    assert event.payload["attempts"] == 2


async def test_truncated_stream_is_an_error_not_a_success(fake_factory, adapter):
    fake = await fake_factory(
        kind="vllm", reply='{"ok": true, "padding": "xxxxxxxx"}', pieces=6, chat_mode="truncated"
    )
    llm, recorder, _ = await adapter(backends_policy(("vllm-a", "vllm", fake)))
    err = await _rpc_error(llm.complete(MESSAGES, json_schema=SCHEMA, max_tokens=16, timeout=10))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert err.details() == "all_backends_failed: vllm-a=truncated_stream"
    (event,) = await wait_for_calls(recorder, 1)
    assert not event.success and event.reason == "all_backends_failed: vllm-a=truncated_stream"


async def test_truncated_stream_fails_over(fake_factory, adapter):
    cut = await fake_factory(kind="sglang", pieces=4, chat_mode="truncated")
    good = await fake_factory(kind="vllm")
    llm, _, _ = await adapter(
        backends_policy(("sglang-a", "sglang", cut), ("vllm-b", "vllm", good))
    )
    reply = await llm.complete(MESSAGES, json_schema=SCHEMA, max_tokens=16, timeout=10)
    assert reply.schema_valid and reply.backend == "vllm-b"
    assert [(f.backend, f.reason) for f in reply.failovers] == [("sglang-a", "truncated_stream")]


async def test_midstream_error_event_is_parsed(fake_factory, adapter):
    fake = await fake_factory(kind="vllm", chat_mode="midstream_error", pieces=4)
    llm, _, _ = await adapter(backends_policy(("vllm-a", "vllm", fake)))
    err = await _rpc_error(llm.complete(MESSAGES, max_tokens=8, timeout=10))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert err.details() == "all_backends_failed: vllm-a=upstream_error"


@pytest.mark.parametrize("kind", ["sglang", "vllm"])
async def test_model_not_listed(kind, fake_factory, adapter):
    fake = await fake_factory(kind=kind, models=["other-model"])
    llm, recorder, _ = await adapter(backends_policy(("a", kind, fake)))
    status = (await llm.health("a", refresh=True)).backends[0]
    assert status.reachable and not status.model_listed and not status.healthy
    assert status.reason.startswith("model_not_listed: m")
    err = await _rpc_error(llm.complete(MESSAGES, max_tokens=8, timeout=10))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == "model_not_listed: no backend lists the model (a=model_not_listed)"
    (event,) = await wait_for_calls(recorder, 1)
    assert event.reason.startswith("model_not_listed")


async def test_model_not_listed_found_by_vllm_404_without_health(fake_factory, adapter):
    fake = await fake_factory(kind="vllm", models=["other-model"])
    llm, _, _ = await adapter(backends_policy(("a", "vllm", fake)))
    err = await _rpc_error(llm.complete(MESSAGES, model="m", backend="", max_tokens=8, timeout=10))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_reply_of_the_wrong_schema_is_rejected_and_retried(fake_factory, adapter):
    fake = await fake_factory(kind="vllm", reply='{"ok": "yes"}')
    llm, recorder, _ = await adapter(backends_policy(("a", "vllm", fake), retries=2))
    reply = await llm.complete(MESSAGES, json_schema=SCHEMA, max_tokens=16, timeout=10)
    assert not reply.schema_valid and reply.content == "" and reply.attempts == 3
    assert reply.validation_error.startswith("schema_mismatch: at ok")
    assert len(fake.chats()) == 3
    (event,) = await wait_for_calls(recorder, 1)
    assert event.reason == "schema_invalid schema_mismatch" and event.json_valid is False


@pytest.mark.parametrize(
    ("reply", "kind", "mode"),
    [
        ('```json\n{"ok": true}\n```', "not_json", "ok"),
        ('Sure! Here it is: {"ok": true}', "not_json", "ok"),
        ('{"ok": true}', "truncated", "length"),
        ('{"ok": tr', "not_json", "ok"),
        ("", "empty", "ok"),
    ],
)
async def test_invalid_outputs_are_caught(reply, kind, mode, fake_factory, adapter):
    fake = await fake_factory(kind="sglang", reply=reply, chat_mode=mode)
    llm, _, _ = await adapter(backends_policy(("a", "sglang", fake), retries=0))
    out = await llm.complete(MESSAGES, json_schema=SCHEMA, max_tokens=16, timeout=10)
    assert not out.schema_valid and out.content == "" and out.attempts == 1
    assert out.validation_error.startswith(kind)


async def test_retry_after_invalid_reply_keeps_the_prefix_and_validates(fake_factory, adapter):
    fake = await fake_factory(kind="vllm", replies=['Here: {"ok": true}', '{"ok": false}'])
    llm, _, _ = await adapter(backends_policy(("a", "vllm", fake), retries=1))
    out = await llm.complete(MESSAGES, json_schema=SCHEMA, max_tokens=16, timeout=10)
    assert out.schema_valid and json.loads(out.content) == {"ok": False} and out.attempts == 2
    first, second = fake.chats()
    assert second["messages"][: len(first["messages"])] == first["messages"]
    assert "rejected (not_json)" in second["messages"][-1]["content"]


async def test_unvalidated_reply_returned_only_when_schema_not_required(fake_factory, adapter):
    fake = await fake_factory(kind="vllm", reply='{"ok": "yes"}')
    llm, _, _ = await adapter(
        backends_policy(("a", "vllm", fake), retries=0, json_schema_required=False)
    )
    out = await llm.complete(MESSAGES, json_schema=SCHEMA, max_tokens=16, timeout=10)
    assert not out.schema_valid and out.content == '{"ok": "yes"}'


async def test_cancelled_stream_closes_the_upstream_request(fake_factory, adapter):
    # 200 pieces 0.3 s apart and no timeout before 60 s: left alone, the
    # upstream request would stay open for a minute.
    fake = await fake_factory(kind="vllm", reply="a " * 200, pieces=200, piece_delay_s=0.3)
    llm, recorder, _ = await adapter(backends_policy(("a", "vllm", fake), timeout_ms=60_000))
    stream = llm.stream_complete(MESSAGES, max_tokens=32, timeout=60)
    first = await stream.__anext__()
    assert first.delta == "a "
    assert fake.open_requests == 1
    await stream.aclose()
    # Closed by the cancellation (within ms), not by the end of the stream or a timeout.
    await eventually(lambda: fake.open_requests == 0, what="upstream request closed", timeout_s=20)
    (event,) = await wait_for_calls(recorder, 1)
    assert not event.success and event.reason == "cancelled"


async def test_first_health_read_does_not_hang_on_a_stuck_probe(fake_factory, adapter):
    stuck = await fake_factory(kind="sglang", probe_hangs=True)
    llm, _, _ = await adapter(
        backends_policy(("a", "sglang", stuck), health={"probe_timeout_ms": 30_000})
    )
    started = time.monotonic()
    status = (await llm.health("a")).backends[0]
    # Limit 10 s: the read answers from the cache at once (ms); the margin is for
    # a loaded 2-core machine, and 10 s is still a third of the 30 s probe it
    # must not wait for.
    assert time.monotonic() - started < 10.0
    assert (
        not status.healthy
        and status.reason == "probe_pending"
        and not status.HasField("checked_at")
    )


async def test_dead_primary_fails_over_with_connect_error(fake_factory, adapter, dead_endpoint):
    dead = dead_endpoint()  # held to the end: no fake started later can take its port and answer
    good = await fake_factory(kind="vllm")
    llm, recorder, _ = await adapter(
        backends_policy(
            ("sglang-a", "sglang", dead), ("vllm-b", "vllm", good), health={"cooldown_s": 0}
        )
    )
    reply = await llm.complete(MESSAGES, json_schema=SCHEMA, max_tokens=16, timeout=10)
    assert reply.schema_valid and reply.backend == "vllm-b"
    # Either the call found it dead, or the background probe did first (then it is skipped).
    (failover,) = reply.failovers
    assert failover.backend == "sglang-a"
    assert failover.reason == "connect_error" or failover.reason.startswith(
        "unhealthy (unreachable: connect_error: "
    )
    (event,) = await wait_for_calls(recorder, 1)
    assert event.is_fallback and event.reason == f"failover sglang-a={failover.reason}"


async def test_audit_never_delays_the_reply_when_capsule_is_down(
    fake_factory, services_factory, dead_endpoint, caplog
):
    from speckit_reflex.clients.inference import InferenceClient

    caplog.set_level(logging.WARNING, logger="speckit.events")
    fake = await fake_factory(kind="vllm")
    svc = await services_factory(
        ["inference"],
        policy=backends_policy(("a", "vllm", fake)),
        capsule_addr=dead_endpoint().addr,
    )
    llm = InferenceClient(svc.ctx.channel("inference"))
    reply = await llm.complete(MESSAGES, json_schema=SCHEMA, max_tokens=16, timeout=5)
    assert reply.schema_valid
    # The LLMCall event's first delivery fails (Capsule refuses connections):
    # the sink says so, and keeps the event for its next try.
    await eventually(
        lambda: [r for r in caplog.records if r.getMessage() == "capsule unreachable, will retry"],
        what="the event sink's failed delivery to the dead Capsule",
    )
    sink = svc.servers["inference"].service.sink
    assert sink.pending == 1 and sink.sent == 0  # held for retry, not lost, not in the reply's way
