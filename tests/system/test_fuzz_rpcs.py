"""Property-based fuzz of every RPC of every service (docs/reliability.md
#20): random and boundary values in every field, generated from the proto
descriptors (a new field is fuzzed without touching this file), never give
INTERNAL or UNKNOWN, never stop a server, and afterwards a normal event is
still stored.

The four services run on port 0 in a thread of their own (hypothesis drives
synchronous tests); the model server is the vLLM-shaped fake.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from speckit_reflex.policy import load_policy
from speckit_reflex.v1 import capsule_pb2, common_pb2, inference_pb2, patchloop_pb2, router_pb2
from tests.conftest import make_settings, start_test_services
from tests.inference.fakes import FakeModelServer
from tests.system.test_system_reliability import KEY_ENV, write_policy

SERVICES = {
    "router": router_pb2.DESCRIPTOR.services_by_name["Router"],
    "inference": inference_pb2.DESCRIPTOR.services_by_name["Inference"],
    "patchloop": patchloop_pb2.DESCRIPTOR.services_by_name["PatchLoop"],
    "capsule": capsule_pb2.DESCRIPTOR.services_by_name["Capsule"],
}
METHODS = [(svc, m) for svc, d in SERVICES.items() for m in d.methods]
# Examples per RPC: a few hundred in all, with boundary values weighted in.
EXAMPLES = 25
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}

_T = FieldDescriptor
_INT_BOUNDS = {
    _T.TYPE_INT32: (-(2**31), 2**31 - 1),
    _T.TYPE_SINT32: (-(2**31), 2**31 - 1),
    _T.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    _T.TYPE_UINT32: (0, 2**32 - 1),
    _T.TYPE_FIXED32: (0, 2**32 - 1),
    _T.TYPE_INT64: (-(2**63), 2**63 - 1),
    _T.TYPE_SINT64: (-(2**63), 2**63 - 1),
    _T.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    _T.TYPE_UINT64: (0, 2**64 - 1),
    _T.TYPE_FIXED64: (0, 2**64 - 1),
}
_BOUNDARY_TEXT = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "x" * 3000,
    "../../etc/passwd",
    "/",
    "reflex",
    "cloud",
    "both",
    "24h",
    "0h",
    "99999999999d",
    "user",
    "system",
    "sk-proj-" + "A" * 24,
    "é" * 300,
    "\ud7ff\U0010ffff",
]


def _text() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(_BOUNDARY_TEXT), st.text(max_size=40))


def _timestamp() -> st.SearchStrategy[timestamp_pb2.Timestamp]:
    seconds = st.one_of(
        st.sampled_from(
            [
                0,
                -1,
                1,
                253_402_300_799,
                253_402_300_800,
                -62_135_596_801,
                2**40,
                -(2**62),
                1_700_000_000,
            ]
        ),
        st.integers(-(2**63), 2**63 - 1),
    )
    nanos = st.sampled_from([0, 1, 999_999_999, 1_000_000_000, -1, 2**31 - 1])
    return st.builds(timestamp_pb2.Timestamp, seconds=seconds, nanos=nanos)


_json = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True, allow_infinity=True) | _text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(_text(), children, max_size=3)
    ),
    max_leaves=8,
)


def _struct() -> st.SearchStrategy[struct_pb2.Struct]:
    def build(d: dict[str, Any]) -> struct_pb2.Struct:
        s = struct_pb2.Struct()
        s.update(d)
        return s

    return st.dictionaries(_text(), _json, max_size=4).map(build)


def _scalar(fd: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    t = fd.type
    if t == _T.TYPE_STRING:
        return _text()
    if t == _T.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == _T.TYPE_BOOL:
        return st.booleans()
    if t in (_T.TYPE_DOUBLE, _T.TYPE_FLOAT):
        edge = [0.0, -0.0, -1.0, 1e308, -1e308, math.nan, math.inf, -math.inf, 5e-324]
        floats = st.floats(width=32 if t == _T.TYPE_FLOAT else 64)
        return st.one_of(st.sampled_from(edge), floats)
    if t == _T.TYPE_ENUM:
        known = list(fd.enum_type.values_by_number)
        return st.one_of(st.sampled_from(known), st.sampled_from([-1, max(known) + 1, 2**31 - 1]))
    if t in _INT_BOUNDS:
        lo, hi = _INT_BOUNDS[t]
        return st.one_of(
            st.sampled_from(
                [lo, hi, 0, 1, 2**31 - 1, 2**31, 1_000_001] if lo == 0 else [lo, hi, 0, -1]
            ),
            st.integers(lo, hi),
        ).filter(lambda v: lo <= v <= hi)
    assert t == _T.TYPE_MESSAGE
    return message_strategy(fd.message_type, depth + 1)


def message_strategy(desc: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of `desc` with any subset of fields set to random or boundary values."""
    if desc.full_name == timestamp_pb2.Timestamp.DESCRIPTOR.full_name:
        return _timestamp()
    if desc.full_name == struct_pb2.Struct.DESCRIPTOR.full_name:
        return _struct()
    cls = GetMessageClass(desc)
    if depth > 3:
        return st.just(cls())
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for fd in desc.fields:
        value = _scalar(fd, depth)
        fields[fd.name] = st.lists(value, max_size=4) if fd.is_repeated else value

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        msg = cls()
        for name, strategy in fields.items():
            if not draw(st.booleans()):
                continue
            value = draw(strategy)
            fd = desc.fields_by_name[name]
            if fd.is_repeated:
                if fd.type == _T.TYPE_MESSAGE:
                    getattr(msg, name).extend(value)
                else:
                    getattr(msg, name).extend(value)
            elif fd.type == _T.TYPE_MESSAGE:
                getattr(msg, name).CopyFrom(value)
            else:
                setattr(msg, name, value)
        return msg

    return build()


class BackgroundStack:
    """The four services on an event loop in a thread of their own."""

    def __init__(self, tmp_path: Path):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.tmp_path = tmp_path

    def run(self, coro: Any, timeout: float = 120) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def start(self) -> None:
        self.model = await FakeModelServer(
            kind="vllm", models=["local-model"], reply=json.dumps({"ok": True}), pieces=1
        ).start()
        policy = load_policy(
            write_policy(
                self.tmp_path / "p.toml",
                [("vllm", "vllm", self.model.base_url)],
                "http://127.0.0.1:9/v1",
                max_failures=2,
                capture="full_io",
            )
        )
        self.services = await start_test_services(
            list(SERVICES), make_settings(self.tmp_path), policy
        )

    async def stop(self) -> None:
        await self.services.stop()
        await self.model.stop()

    def close(self) -> None:
        self.run(self.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[BackgroundStack, dict[str, grpc.Channel]]]:
    mp = pytest.MonkeyPatch()
    mp.setenv(KEY_ENV, "sk-test")
    s = BackgroundStack(tmp_path_factory.mktemp("fuzz"))
    s.run(s.start())
    channels = {name: grpc.insecure_channel(s.services.addr(name)) for name in SERVICES}
    try:
        yield s, channels
    finally:
        for ch in channels.values():
            ch.close()
        s.close()
        mp.undo()


def _call(channel: grpc.Channel, service: str, method: MethodDescriptor, request: Message) -> None:
    path = f"/{SERVICES[service].full_name}/{method.name}"
    out_cls = GetMessageClass(method.output_type)
    kw = {
        "request_serializer": type(request).SerializeToString,
        "response_deserializer": out_cls.FromString,
    }
    try:
        if method.server_streaming:
            for _ in channel.unary_stream(path, **kw)(request, timeout=30):
                pass
        else:
            channel.unary_unary(path, **kw)(request, timeout=30)
    except grpc.RpcError as exc:
        code = exc.code()  # type: ignore[attr-defined]
        assert code not in FORBIDDEN, (
            f"{service}.{method.name} -> {code.name}: {exc.details()}\n{str(request)[:600]}"
        )  # type: ignore[attr-defined]
        assert code != grpc.StatusCode.UNAVAILABLE or service == "inference", (
            f"{service}.{method.name} down? {exc}"
        )


@pytest.mark.parametrize(("service", "method"), METHODS, ids=[f"{s}.{m.name}" for s, m in METHODS])
def test_no_rpc_input_gives_internal_or_unknown(
    stack, service: str, method: MethodDescriptor
) -> None:
    _, channels = stack

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    )
    @given(message_strategy(method.input_type))
    def fuzz(request: Message) -> None:
        _call(channels[service], service, method, request)

    fuzz()


_SWEEP_TEXT = [
    "a\x00b",
    "x" * 3000,
    "../../etc/passwd",
    "/",
    "é" * 300,
    "99999999999d",
    "sk-proj-" + "A" * 24,
]


def _boundaries(fd: FieldDescriptor) -> list[Any]:
    """The values every top-level field of its kind is tried with, one at a time."""
    t = fd.type
    if t == _T.TYPE_STRING:
        return _SWEEP_TEXT
    if t in (_T.TYPE_DOUBLE, _T.TYPE_FLOAT):
        return [math.nan, math.inf, -math.inf, -1.0, 1e308]
    if t == _T.TYPE_ENUM:
        return [-1, max(fd.enum_type.values_by_number) + 1]
    if t in _INT_BOUNDS:
        lo, hi = _INT_BOUNDS[t]
        return sorted(v for v in {lo, hi, 2**31 - 1, 2**31} if lo <= v <= hi)
    return []


@pytest.mark.parametrize(("service", "method"), METHODS, ids=[f"{s}.{m.name}" for s, m in METHODS])
def test_each_boundary_value_alone_in_each_field(
    stack, service: str, method: MethodDescriptor
) -> None:
    """Deterministic complement of the random examples: each boundary value,
    alone, in each top-level field."""
    _, channels = stack
    cls = GetMessageClass(method.input_type)
    for fd in method.input_type.fields:
        for value in _boundaries(fd):
            request = cls()
            if fd.is_repeated:
                getattr(request, fd.name).append(value)
            else:
                setattr(request, fd.name, value)
            _call(channels[service], service, method, request)


def test_after_the_fuzz_every_server_serves_and_a_normal_event_is_stored(stack) -> None:
    s, channels = stack
    for name, ch in channels.items():
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
    ev = common_pb2.Event(
        id=str(uuid.uuid4()), type=common_pb2.EVENT_TYPE_AUDIT, session_id="after-fuzz"
    )
    capsule = channels["capsule"]
    append = capsule.unary_unary(
        "/speckit_reflex.v1.Capsule/AppendEvents",
        request_serializer=capsule_pb2.AppendEventsRequest.SerializeToString,
        response_deserializer=capsule_pb2.AppendEventsReply.FromString,
    )
    assert append(capsule_pb2.AppendEventsRequest(events=[ev]), timeout=10).inserted == 1
    query = capsule.unary_unary(
        "/speckit_reflex.v1.Capsule/QueryEvents",
        request_serializer=capsule_pb2.QueryEventsRequest.SerializeToString,
        response_deserializer=capsule_pb2.QueryEventsReply.FromString,
    )
    got = query(capsule_pb2.QueryEventsRequest(session_id="after-fuzz"), timeout=10).events
    assert [e.id for e in got] == [ev.id]
    # And the services' own events (the fuzz's routing decisions, model calls) still flow.
    for name in ("router", "inference", "patchloop"):
        svc = s.services.servers[name].service
        sink = getattr(svc, "sink", None) or getattr(svc, "events", None)
        assert s.run(sink.flush(20.0)), f"{name}'s events stopped flowing"
