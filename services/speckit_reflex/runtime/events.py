"""Background delivery of capsule events.

Services record events without waiting on Capsule: `EventSink.emit()` puts the
event in a bounded buffer and returns at once; a background task sends batches
with AppendEvents (when `batch_size` events are queued or `flush_interval_s`
has passed, whichever comes first) and retries failed batches with backoff. Because Capsule is
idempotent by event id, a retried batch that had in fact been stored is not
stored twice. When the buffer is full the oldest event is dropped and counted
(`dropped`), and a warning is logged: the hot path never blocks on audit.

A batch is also bounded in bytes (`max_batch_bytes`, well under the gRPC
message limit): LLMCall events carry whole prompts.

Only faults that pass are retried as they are (Capsule or its database
unreachable, a deadline, a wrong token or an unmigrated database, which an
operator fixes). Any other answer is a refusal of the batch's content
(INVALID_ARGUMENT for an event Capsule or its database cannot store,
RESOURCE_EXHAUSTED for one too large for its limit, INTERNAL for one that
trips a bug): retrying it as is would block every later event behind it
forever. Such a batch is split in halves and retried, down to the single
event that can never be stored; that one goes to the dead-letter file
(`DeadLetters`: a JSON line with the event, the status and the reason) and
the rest is delivered.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from speckit_reflex.runtime.redact import redact, redact_text
from speckit_reflex.v1 import capsule_pb2, capsule_pb2_grpc, common_pb2

log = logging.getLogger("speckit.events")

# Answers that say nothing about the batch itself: retry it unchanged.
RETRIED_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
)


def _event_doc(event: common_pb2.Event) -> dict[str, object]:
    """The event as JSON, even when a part has no JSON form (a Timestamp out
    of range, a Value with no kind): that part is left out and named."""
    try:
        return MessageToDict(event, preserving_proto_field_name=True)
    except Exception:  # json_format raises several types for unrepresentable parts
        pass
    copy = common_pb2.Event()
    copy.CopyFrom(event)
    unreadable: dict[str, str] = {}
    for name in ("time", "payload", "request", "response"):
        if copy.HasField(name):
            try:
                MessageToDict(getattr(copy, name))
            except Exception as exc:
                unreadable[name] = str(exc)
                copy.ClearField(name)
    doc = MessageToDict(copy, preserving_proto_field_name=True)
    doc["unreadable_fields"] = unreadable
    return doc


class DeadLetters:
    """Events Capsule can never store: one JSON object per line, appended to
    `path` (created 0600: events carry prompts), redacted like Capsule would."""

    def __init__(self, path: Path, service: str):
        self.path = path
        self._service = service

    def write(self, event: common_pb2.Event, code: str, reason: str) -> bool:
        """Append one event with why it was refused; False if the file could not be written."""
        line = {
            "at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "service": self._service,
            "code": code,
            "reason": redact_text(reason),
            "event": redact(_event_doc(event)),
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, (json.dumps(line) + "\n").encode())
            finally:
                os.close(fd)
        except OSError as exc:
            log.error(
                "dead-letter file not writable",
                extra={"fields": {"path": str(self.path), "error": str(exc)}},
            )
            return False
        return True


def new_event(event_type: common_pb2.EventType.ValueType, **fields: object) -> common_pb2.Event:
    """An Event with a fresh id and the current time; dict payloads become Structs."""
    ev = common_pb2.Event(id=str(uuid.uuid4()), type=event_type)
    ev.time.GetCurrentTime()
    for key, value in fields.items():
        if value is None:
            continue
        if key in ("payload", "request", "response") and isinstance(value, dict):
            s = Struct()
            s.update(value)
            getattr(ev, key).CopyFrom(s)
        elif isinstance(value, Timestamp):
            getattr(ev, key).CopyFrom(value)
        else:
            setattr(ev, key, value)
    return ev


class EventSink:
    """Bounded, batched, retrying sender of events to Capsule."""

    def __init__(
        self,
        channel_factory: Callable[[], grpc.aio.Channel],
        *,
        capacity: int = 10_000,
        batch_size: int = 500,
        max_batch_bytes: int = 4 * 1024 * 1024,
        flush_interval_s: float = 0.05,
        rpc_timeout_s: float = 5.0,
        max_backoff_s: float = 5.0,
        stamp: Callable[[common_pb2.Event], None] | None = None,
        dead_letters: DeadLetters | None = None,
    ):
        self._channel_factory = channel_factory
        # Puts the recording span's trace ids on each event (tracing on only).
        self._stamp = stamp
        self._buffer: deque[common_pb2.Event] = deque()
        self._capacity = capacity
        self._batch_size = batch_size
        self._max_batch_bytes = max_batch_bytes
        self._flush_interval_s = flush_interval_s
        self._rpc_timeout_s = rpc_timeout_s
        self._max_backoff_s = max_backoff_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._inflight: list[common_pb2.Event] = []
        # Built on first send (the channel may not exist yet at construction).
        self._stub: capsule_pb2_grpc.CapsuleAsyncStub | None = None
        self._dead_letters = dead_letters
        #: events lost: buffer overflow, or refused with no dead-letter file to keep them
        self.dropped = 0
        #: events refused for good and kept in the dead-letter file
        self.dead_lettered = 0
        self.sent = 0

    def emit(self, event: common_pb2.Event) -> None:
        """Queue an event; never blocks, never raises for delivery problems."""
        if self._stamp is not None:
            self._stamp(event)
        if len(self._buffer) >= self._capacity:
            self._buffer.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning(
                    "event buffer full, dropping oldest",
                    extra={"fields": {"dropped": self.dropped}},
                )
        self._buffer.append(event)
        if len(self._buffer) >= self._batch_size:
            self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._buffer) + len(self._inflight)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="event-sink")

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            if not self._inflight:
                if len(self._buffer) < self._batch_size:
                    # Gather a batch: send when it is full, when flush() asks,
                    # or when the interval is up. Sending whatever arrived
                    # during the previous RPC instead would make one small RPC
                    # per few events under load, costing more CPU than the
                    # events themselves on both ends.
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), self._flush_interval_s)
                    except TimeoutError:
                        pass
                    if not self._buffer:
                        continue
                self._inflight = self._take_batch()
            try:
                if self._stub is None:
                    self._stub = capsule_pb2_grpc.CapsuleStub(self._channel_factory())
                await self._stub.AppendEvents(
                    capsule_pb2.AppendEventsRequest(events=self._inflight),
                    timeout=self._rpc_timeout_s,
                )
                self.sent += len(self._inflight)
                self._inflight = []
                backoff = 0.1
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRIED_CODES:
                    # A refusal, not an outage: retrying as is would never succeed.
                    self._split_refused(exc)
                    continue
                log.warning(
                    "capsule unreachable, will retry",
                    extra={"fields": {"code": exc.code().name, "backoff_s": backoff}},
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff_s)

    def _take_batch(self) -> list[common_pb2.Event]:
        """Up to batch_size queued events within max_batch_bytes (at least one)."""
        batch = [self._buffer.popleft()]
        size = batch[0].ByteSize()
        while self._buffer and len(batch) < self._batch_size:
            size += self._buffer[0].ByteSize()
            if size > self._max_batch_bytes:
                break
            batch.append(self._buffer.popleft())
        return batch

    def _split_refused(self, exc: grpc.aio.AioRpcError) -> None:
        """Capsule refused the in-flight batch: send its first half next and
        queue the rest in front; a refused single event is dead-lettered."""
        if len(self._inflight) > 1:
            half = len(self._inflight) // 2
            self._buffer.extendleft(reversed(self._inflight[half:]))
            self._inflight = self._inflight[:half]
            return
        event = self._inflight[0]
        self._inflight = []
        code, why = exc.code().name, exc.details() or ""
        kept = self._dead_letters is not None and self._dead_letters.write(event, code, why)
        if kept:
            self.dead_lettered += 1
        else:
            self.dropped += 1
        log.error(
            "capsule refused an event for good",
            extra={
                "fields": {
                    "event_id": event.id,
                    "bytes": event.ByteSize(),
                    "code": code,
                    "error": redact_text(why),
                    "dead_letter": str(self._dead_letters.path)
                    if kept and self._dead_letters
                    else "none (dropped)",
                }
            },
        )

    async def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until everything queued so far is delivered (or timeout)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.pending and loop.time() < deadline:
            self._wake.set()
            await asyncio.sleep(0.01)
        return self.pending == 0

    async def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is queued (bounded by timeout_s), then stop."""
        if self._task is None:
            return
        await self.flush(timeout_s)
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None
        if self.pending:
            log.warning(
                "events not delivered at shutdown", extra={"fields": {"count": self.pending}}
            )
