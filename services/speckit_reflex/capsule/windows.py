"""Time windows of the statistics: "1h", "24h", "7d", "30d" (any `<n>[smhd]`)
back from now, or an explicit [start, end)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from google.protobuf import timestamp_pb2

from speckit_reflex.errors import InvalidArgument
from speckit_reflex.v1 import capsule_pb2

DEFAULT_PERIOD = "24h"
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
MAX_SPAN_US = 100 * 365 * 86_400_000_000
_UNIT_US = {"s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000}


@dataclass(frozen=True)
class TimeWindow:
    """[start_us, end_us) in microseconds since the epoch, and its label."""

    start_us: int
    end_us: int
    period: str


def parse_duration_us(text: str) -> int:
    """Microseconds in a duration like "24h"; InvalidArgument if it is not one."""
    m = _DURATION.match(text)
    if not m or int(m.group(1)) == 0:
        raise InvalidArgument(f"window {text!r} is not a duration like 1h, 24h, 7d or 30d")
    span = int(m.group(1)) * _UNIT_US[m.group(2)]
    if span > MAX_SPAN_US:  # the window's start must stay a 64-bit time
        raise InvalidArgument(f"window {text!r} is longer than 100 years")
    return span


def _ts_us(ts: timestamp_pb2.Timestamp) -> int:
    return ts.seconds * 1_000_000 + ts.nanos // 1000


def resolve_window(window: capsule_pb2.Window | None, now_us: int) -> TimeWindow:
    """The concrete window of a request.

    A duration covers (now - duration, now], i.e. it includes an event stamped
    exactly now. Explicit times are [start, end); a missing end is now, a
    missing start is an error (there is no sensible default).
    """
    if window is not None and (window.HasField("start") or window.HasField("end")):
        if window.since:
            raise InvalidArgument("give either window.since or window.start/end, not both")
        if not window.HasField("start"):
            raise InvalidArgument("window.end without window.start")
        start = _ts_us(window.start)
        end = _ts_us(window.end) if window.HasField("end") else now_us + 1
        if end <= start:
            raise InvalidArgument("window.end must be after window.start")
        return TimeWindow(start, end, "custom")
    period = (window.since.strip() if window is not None else "") or DEFAULT_PERIOD
    span = parse_duration_us(period)
    return TimeWindow(now_us - span + 1, now_us + 1, period)
