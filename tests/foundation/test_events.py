"""EventSink delivery to a real gRPC Capsule servicer on port 0: batching,
flush, retry after an outage, and the bounded buffer."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from grpc import aio

from speckit_reflex.runtime.events import DeadLetters, EventSink, new_event
from speckit_reflex.runtime.metrics import Metrics, watch_event_sink
from speckit_reflex.v1 import capsule_pb2, capsule_pb2_grpc, common_pb2
from tests.waiting import eventually


class _CountingCapsule(capsule_pb2_grpc.CapsuleServicer):
    """Records the size of every AppendEvents batch; can refuse for a while."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.ids: list[str] = []
        self.unavailable = 0

    async def AppendEvents(self, request, context):  # type: ignore[no-untyped-def]
        if self.unavailable:
            self.unavailable -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "down for the test")
        self.batches.append(len(request.events))
        self.ids.extend(e.id for e in request.events)
        return capsule_pb2.AppendEventsReply(inserted=len(request.events))


@contextlib.asynccontextmanager
async def _served(
    servicer: _CountingCapsule, **options: int
) -> AsyncIterator[Callable[..., EventSink]]:
    """`servicer` on port 0 (with grpc server options); yields a factory of
    started sinks sending to it, all closed on exit."""
    server = aio.server(options=[(f"grpc.{k}", v) for k, v in options.items()])
    capsule_pb2_grpc.add_CapsuleServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    sinks: list[EventSink] = []

    def sink(**kw: object) -> EventSink:
        s = EventSink(lambda: channel, **kw)  # type: ignore[arg-type]
        s.start()
        sinks.append(s)
        return s

    try:
        yield sink
    finally:
        for s in sinks:
            await s.close(1.0)
        await channel.close()
        await server.stop(0)


@pytest.fixture
async def capsule() -> AsyncIterator[tuple[_CountingCapsule, Callable[..., EventSink]]]:
    """A counting Capsule on port 0 and a factory of started sinks sending to it."""
    servicer = _CountingCapsule()
    async with _served(servicer) as make:
        yield servicer, make


def _event() -> common_pb2.Event:
    return new_event(common_pb2.EVENT_TYPE_ROUTING_DECISION, reason="healthy_and_thresholds_met")


async def test_steady_emission_goes_out_in_full_batches(capsule) -> None:  # type: ignore[no-untyped-def]
    # While one batch is in flight more events arrive; they wait for a full
    # batch (or flush/interval) rather than leaving as many small RPCs.
    servicer, make = capsule
    sink = make(batch_size=100, flush_interval_s=30.0)
    for _ in range(250):
        sink.emit(_event())
        await asyncio.sleep(0)
    # The two full batches leave without a flush.
    await eventually(lambda: sum(servicer.batches) >= 200, what="two full batches sent")
    assert servicer.batches == [100, 100]
    assert await sink.flush(5.0)
    assert servicer.batches == [100, 100, 50]
    assert len(set(servicer.ids)) == 250 and sink.sent == 250 and sink.dropped == 0


async def test_partial_batch_leaves_after_the_interval(capsule) -> None:  # type: ignore[no-untyped-def]
    servicer, make = capsule
    sink = make(batch_size=500, flush_interval_s=0.05)
    for _ in range(7):
        sink.emit(_event())
    await eventually(lambda: servicer.batches, what="the partial batch sent")
    assert servicer.batches == [7]


async def test_outage_is_retried_without_loss_or_duplicates(capsule) -> None:  # type: ignore[no-untyped-def]
    servicer, make = capsule
    servicer.unavailable = 2
    sink = make(batch_size=50, flush_interval_s=0.02)
    for _ in range(120):
        sink.emit(_event())
    assert await sink.flush(10.0)
    assert len(servicer.ids) == len(set(servicer.ids)) == 120
    assert sink.sent == 120 and sink.dropped == 0


def test_full_buffer_drops_oldest_and_counts() -> None:
    sink = EventSink(lambda: aio.insecure_channel("127.0.0.1:9"), capacity=10)
    events = [_event() for _ in range(15)]
    for e in events:
        sink.emit(e)  # not started: nothing is sent, the buffer fills
    assert sink.dropped == 5 and sink.pending == 10
    assert [e.id for e in sink._buffer] == [e.id for e in events[5:]]


class _PickyCapsule(_CountingCapsule):
    """Refuses any batch holding an event whose reason names a status code
    ("bad" = INVALID_ARGUMENT); refuses the first `flaky` calls as UNAVAILABLE."""

    def __init__(self, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT) -> None:
        super().__init__()
        self.code = code
        self.calls = 0

    async def AppendEvents(self, request, context):  # type: ignore[no-untyped-def]
        self.calls += 1
        for i, e in enumerate(request.events):
            if e.reason == "bad":
                await context.abort(self.code, f"events[{i}].reason: bad, password=hunter2")
        return await super().AppendEvents(request, context)


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ],
)
async def test_a_refused_event_goes_to_the_dead_letter_file_and_the_rest_is_delivered(
    tmp_path,
    code: grpc.StatusCode,
) -> None:
    picky = _PickyCapsule(code)
    async with _served(picky) as make:
        path = tmp_path / "dead-letter" / "router-events.jsonl"
        sink = make(batch_size=64, flush_interval_s=0.01, dead_letters=DeadLetters(path, "router"))
        events = [_event() for _ in range(40)]
        events[5].reason = events[30].reason = "bad"
        events[5].session_id = "has\x00nul"
        events[30].payload.update({"note": "key sk-proj-abcdefghijklmnop"})
        for e in events:
            sink.emit(e)
        assert await sink.flush(10.0)
        assert sorted(picky.ids) == sorted(e.id for i, e in enumerate(events) if i not in (5, 30))
        assert sink.dead_lettered == 2 and sink.dropped == 0 and sink.sent == 38
        # The count an operator alerts on, as /metrics shows it.
        metrics = Metrics()
        watch_event_sink(metrics, "router", sink)
        text = metrics.exposition().decode()
        assert 'speckit_event_sink_dead_lettered_total{service="router"} 2.0' in text
        assert 'speckit_event_sink_sent_total{service="router"} 38.0' in text
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [(x["event"]["id"], x["code"], x["service"]) for x in lines] == [
        (events[5].id, code.name, "router"),
        (events[30].id, code.name, "router"),
    ]
    assert (
        lines[0]["event"]["session_id"] == "has\x00nul"
        and "events[0].reason: bad" in lines[0]["reason"]
    )
    # Redacted like Capsule redacts what it stores.
    assert "hunter2" not in path.read_text() and "sk-proj-abcdefghijklmnop" not in path.read_text()
    assert oct(path.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNAUTHENTICATED,
    ],
)
async def test_faults_that_pass_are_retried_whole_not_split(
    tmp_path, code: grpc.StatusCode
) -> None:
    picky = _PickyCapsule(code)
    async with _served(picky) as make:
        path = tmp_path / "dead-letter.jsonl"
        sink = make(
            batch_size=64,
            flush_interval_s=0.01,
            max_backoff_s=0.05,
            dead_letters=DeadLetters(path, "x"),
        )
        events = [_event() for _ in range(8)]
        events[3].reason = "bad"
        for e in events:
            sink.emit(e)
        # Refused again and again, as a whole.
        await eventually(lambda: picky.calls >= 4, what="four refused deliveries")
        assert (
            picky.ids == [] and sink.pending == 8 and sink.dead_lettered == 0 and not path.exists()
        )
        events[3].reason = "fixed"  # the fault passes: the same batch goes through whole
        picky.code = grpc.StatusCode.OK
        assert await sink.flush(10.0)
        assert sorted(picky.ids) == sorted(e.id for e in events) and picky.batches == [8]


async def test_refused_batch_loses_only_the_bad_event() -> None:
    picky = _PickyCapsule()
    async with _served(picky) as make:
        sink = make(batch_size=64, flush_interval_s=0.01)
        events = [_event() for _ in range(40)]
        events[17].reason = "bad"
        for e in events:
            sink.emit(e)
        assert await sink.flush(10.0)
        assert sorted(picky.ids) == sorted(e.id for i, e in enumerate(events) if i != 17)
        assert sink.dropped == 1 and sink.sent == 39


def _blob_events(n: int, size: int) -> list[common_pb2.Event]:
    return [
        new_event(common_pb2.EVENT_TYPE_LLM_CALL, payload={"blob": "x" * size}) for _ in range(n)
    ]


async def test_batches_stay_under_the_byte_bound(capsule) -> None:  # type: ignore[no-untyped-def]
    servicer, make = capsule
    sink = make(batch_size=500, max_batch_bytes=32 * 1024, flush_interval_s=0.01)
    for e in _blob_events(30, 10_000):
        sink.emit(e)
    assert await sink.flush(10.0)
    assert sum(servicer.batches) == 30 and max(servicer.batches) == 3 and sink.dropped == 0


async def test_too_large_for_capsule_splits_and_drops_only_the_oversized_event() -> None:
    # Capsule accepts messages up to 64 KiB; events carry 10 kB each, one 100 kB.
    servicer = _CountingCapsule()
    async with _served(servicer, max_receive_message_length=64 * 1024) as make:
        # The sink's own bound is above Capsule's limit: refusals split the batches.
        sink = make(batch_size=500, max_batch_bytes=256 * 1024, flush_interval_s=0.01)
        events = _blob_events(30, 10_000)
        huge = _blob_events(1, 100_000)[0]
        for e in [*events[:10], huge, *events[10:]]:
            sink.emit(e)
        assert await sink.flush(10.0)
        assert sorted(servicer.ids) == sorted(e.id for e in events)
        assert sink.dropped == 1 and max(servicer.batches) <= 6
