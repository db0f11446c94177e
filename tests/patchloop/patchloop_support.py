"""Helpers shared by the PatchLoop tests: in-memory peers and event checks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from speckit_reflex.patchloop.core import PatchLoop
from speckit_reflex.patchloop.ports import ModelCallFailed, RouteRefused
from speckit_reflex.v1 import common_pb2, inference_pb2, patchloop_pb2, router_pb2

CRATES = Path(__file__).parent / "crates"


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under root (symlinks by target), for byte-for-byte checks."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = "link:" + str(p.readlink())
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


class ScriptedRouter:
    """Answers like the Router's flow: REFLEX until max_failures, then CLOUD."""

    def __init__(self, max_failures: int = 2, refuse_cloud: str = ""):
        self.max_failures = max_failures
        self.refuse_cloud = refuse_cloud
        self.requests: list[router_pb2.DecideRequest] = []

    async def decide(self, request: router_pb2.DecideRequest) -> router_pb2.RoutingDecision:
        self.requests.append(request)
        cloud = request.consecutive_failures >= self.max_failures
        if request.force_mode == common_pb2.ROUTING_MODE_REFLEX:
            cloud = False
        if cloud and self.refuse_cloud:
            raise RouteRefused(self.refuse_cloud)
        return router_pb2.RoutingDecision(
            decision_id=f"d{len(self.requests)}",
            mode=common_pb2.ROUTING_MODE_CLOUD if cloud else common_pb2.ROUTING_MODE_REFLEX,
            reason=common_pb2.ROUTING_REASON_MAX_FAILURES_REACHED
            if cloud
            else common_pb2.ROUTING_REASON_HEALTHY_AND_THRESHOLDS_MET,
            model="cloud-model" if cloud else "local-model",
            backend="cloud" if cloud else "local",
            is_fallback=cloud,
        )


def reply(
    content: str | dict, *, valid: bool = True, prompt_tokens: int = 100, cached: int | None = None
) -> inference_pb2.CompleteReply:
    text = content if isinstance(content, str) else json.dumps(content)
    r = inference_pb2.CompleteReply(
        content=text if valid else "",
        schema_valid=valid,
        attempts=1,
        finish_reason="stop",
        usage=common_pb2.Usage(prompt_tokens=prompt_tokens, completion_tokens=20),
        timing=common_pb2.Timing(latency_ms=12.5, tokens_per_s=40.0, ttft_ms=3.0),
    )
    if cached is not None:
        r.usage.cached_tokens = cached
    if not valid:
        r.validation_error = "truncated reply"
    return r


class ScriptedInference:
    """Returns the queued replies in order (the last one repeats); records requests.

    A reply may also be a callable of the request, or a ModelCallFailed to raise.
    """

    def __init__(self, replies: list):
        self.replies = list(replies)
        self.requests: list[inference_pb2.CompleteRequest] = []

    async def complete(
        self, request: inference_pb2.CompleteRequest, timeout_s: float
    ) -> inference_pb2.CompleteReply:
        self.requests.append(request)
        item = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if callable(item):
            item = item(request)
        if isinstance(item, ModelCallFailed):
            raise item
        out = inference_pb2.CompleteReply()
        out.CopyFrom(item)
        # Like the adapter: an unnamed reflex backend is the first local one.
        out.backend = request.backend or "local"
        out.model = request.model
        return out


class RecordingEvents:
    def __init__(self) -> None:
        self.events: list[common_pb2.Event] = []

    def emit(self, event: common_pb2.Event) -> None:
        self.events.append(event)

    def of_type(self, t: int) -> list[common_pb2.Event]:
        return [e for e in self.events if e.type == t]


FIXED_LINE = {
    "edits": [
        {
            "file": "src/lib.rs",
            "line_start": 9,
            "line_end": 9,
            "replacement": "        2 * (self.width + self.height)",
        }
    ]
}
NOOP_LINE = {
    "edits": [
        {
            "file": "src/lib.rs",
            "line_start": 9,
            "line_end": 9,
            "replacement": "        2 * (self.width + self.hieght) ",
        }
    ]
}


async def run_all(
    loop: PatchLoop, **fields
) -> tuple[list[patchloop_pb2.RunEvent], patchloop_pb2.RunResult]:
    events = [ev async for ev in loop.run(patchloop_pb2.RunRequest(**fields))]
    assert events[-1].WhichOneof("kind") == "result"
    return events, events[-1].result


def kinds(events: list[patchloop_pb2.RunEvent], kind: str) -> list:
    return [getattr(e, kind) for e in events if e.WhichOneof("kind") == kind]
