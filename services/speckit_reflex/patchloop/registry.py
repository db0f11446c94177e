"""Run bookkeeping: each run's record, the registry of recent runs, and the
consecutive failed attempts of each session.

A `RunRecord` is what a caller sees of a run (its events so far and, at the
end, its result); `RunRegistry` keeps the most recent ones for GetRun;
`SessionFailures` carries a session's failure count from one run to the
next, so escalation to cloud follows the policy across a session's runs.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable

from speckit_reflex.errors import InvalidArgument, NotFound
from speckit_reflex.patchloop.ports import SessionHistoryPort, SessionHistoryUnavailable
from speckit_reflex.v1 import patchloop_pb2


class RunRecord:
    """A running or finished run: its events so far and, at the end, its result."""

    def __init__(self, run_id: str, workspace: str):
        self.run_id = run_id
        self.workspace = workspace
        self.events: list[patchloop_pb2.RunEvent] = []
        self.result: patchloop_pb2.RunResult | None = None
        self._wake = asyncio.Event()

    @property
    def done(self) -> bool:
        return self.result is not None

    def append(self, event: patchloop_pb2.RunEvent) -> None:
        self.events.append(event)
        if event.WhichOneof("kind") == "result":
            self.result = event.result
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()

    async def follow(self) -> AsyncIterator[patchloop_pb2.RunEvent]:
        """Every event from the first, then new ones as they come, until the result."""
        i = 0
        while True:
            wake = self._wake
            while i < len(self.events):
                yield self.events[i]
                i += 1
            if self.done:
                return
            await wake.wait()

    def status(self) -> patchloop_pb2.RunStatus:
        st = patchloop_pb2.RunStatus(
            run_id=self.run_id,
            state=patchloop_pb2.RUN_STATE_DONE if self.done else patchloop_pb2.RUN_STATE_RUNNING,
            events=self.events,
            workspace=self.workspace,
        )
        if self.result is not None:
            st.result.CopyFrom(self.result)
        return st


class RunRegistry:
    """The most recent runs, bounded; the oldest finished ones are forgotten first."""

    def __init__(self, capacity: int = 256):
        self._capacity = capacity
        self._runs: OrderedDict[str, RunRecord] = OrderedDict()

    def add(self, record: RunRecord) -> None:
        if record.run_id in self._runs:
            raise InvalidArgument(f"run id {record.run_id!r} is already in use")
        self._runs[record.run_id] = record
        while len(self._runs) > self._capacity:
            victim = next((k for k, r in self._runs.items() if r.done), None)
            if victim is None:
                break
            del self._runs[victim]

    def get(self, run_id: str) -> RunRecord:
        if run_id not in self._runs:
            raise NotFound(
                f"no run {run_id!r} (unknown, or forgotten after {self._capacity} newer runs)"
            )
        return self._runs[run_id]


class SessionFailures:
    """Consecutive failed attempts per session, so escalation spans a session's runs.

    This process's own count first; for a session it has not seen, the
    record `history` keeps (Capsule), when there is one.
    """

    def __init__(self, history: SessionHistoryPort | None = None, capacity: int = 10_000):
        self._history = history
        self._capacity = capacity
        self._counts: OrderedDict[str, int] = OrderedDict()

    def known(self, session_id: str) -> int | None:
        """The count, or None for a session this process has not seen."""
        return self._counts.get(session_id)

    def set(self, session_id: str, count: int) -> None:
        self._counts[session_id] = count
        self._counts.move_to_end(session_id)
        while len(self._counts) > self._capacity:
            self._counts.popitem(last=False)

    async def at_start(self, session_id: str, run_id: str, note: Callable[[str], None]) -> int:
        """The session's count as a run of it starts: this process's, or the
        record's for a session it has not seen (`note` tells the run which)."""
        count = self.known(session_id)
        if count is not None or self._history is None or session_id == run_id:
            return count or 0  # a session named after its run is new by construction
        try:
            count = await self._history.consecutive_failures(session_id)
        except SessionHistoryUnavailable as exc:
            note(f"session history unavailable ({exc}); counting this session's failures from 0")
            return 0
        if count:
            note(f"session {session_id}: {count} consecutive failed attempt(s) on record")
        self.set(session_id, count)
        return count
