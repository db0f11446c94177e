"""EventSink delivery to a real gRPC Capsule servicer on port 0: batching,
flush, retry after an outage, and the bounded buffer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from grpc import aio

from speckit_reflex.runtime.events import EventSink, new_event
from speckit_reflex.v1 import capsule_pb2, capsule_pb2_grpc, common_pb2


class _CountingCapsule(capsule_pb2_grpc.CapsuleServicer):
    """Records the size of every AppendEvents batch; can refuse for a while."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.ids: list[str] = []
        self.unavailable = 0

    async def AppendEvents(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        if self.unavailable:
            self.unavailable -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "down for the test")
        self.batches.append(len(request.events))
        self.ids.extend(e.id for e in request.events)
        return capsule_pb2.AppendEventsReply(inserted=len(request.events))


@pytest.fixture
async def capsule() -> AsyncIterator[tuple[_CountingCapsule, Callable[..., EventSink]]]:
    """A counting Capsule on port 0 and a factory of started sinks sending to it."""
    server = aio.server()
    servicer = _CountingCapsule()
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

    yield servicer, sink
    for s in sinks:
        await s.close(1.0)
    await channel.close()
    await server.stop(0)


def _event() -> common_pb2.Event:
    return new_event(common_pb2.EVENT_TYPE_ROUTING_DECISION, reason="healthy_and_thresholds_met")


async def _until(cond: Callable[[], bool], seconds: float = 3.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if cond():
            return
        await asyncio.sleep(0.01)


async def test_steady_emission_goes_out_in_full_batches(capsule) -> None:  # type: ignore[no-untyped-def]
    # While one batch is in flight more events arrive; they wait for a full
    # batch (or flush/interval) rather than leaving as many small RPCs.
    servicer, make = capsule
    sink = make(batch_size=100, flush_interval_s=30.0)
    for _ in range(250):
        sink.emit(_event())
        await asyncio.sleep(0)
    await _until(lambda: sum(servicer.batches) >= 200)  # the two full batches leave without a flush
    assert servicer.batches == [100, 100]
    assert await sink.flush(5.0)
    assert servicer.batches == [100, 100, 50]
    assert len(set(servicer.ids)) == 250 and sink.sent == 250 and sink.dropped == 0


async def test_partial_batch_leaves_after_the_interval(capsule) -> None:  # type: ignore[no-untyped-def]
    servicer, make = capsule
    sink = make(batch_size=500, flush_interval_s=0.05)
    for _ in range(7):
        sink.emit(_event())
    await _until(lambda: bool(servicer.batches))
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
