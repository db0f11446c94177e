"""The shared server runtime: health, reflection, error mapping, auth, limits,
TLS, graceful stop — on real gRPC servers."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from speckit_reflex.clients.channel import ChannelConfig, open_channel
from speckit_reflex.errors import FailedPrecondition, InvalidArgument, Unavailable
from speckit_reflex.runtime.server import InsecureListenRefused, create_server
from speckit_reflex.runtime.settings import RuntimeSettings
from speckit_reflex.v1 import common_pb2, router_pb2, router_pb2_grpc
from tests.waiting import eventually

DEFAULT_PORTS = (50051, 50052, 50053, 50054)


class _SlowRouter(router_pb2_grpc.RouterServicer):
    """A test servicer: Decide sleeps, then raises what session_id names."""

    def __init__(self) -> None:
        self.started = 0

    async def Decide(self, request, context):  # type: ignore[no-untyped-def]
        self.started += 1
        await asyncio.sleep(request.attempt / 1000)
        errors = {
            "invalid": InvalidArgument,
            "precondition": FailedPrecondition,
            "unavailable": Unavailable,
        }
        if request.session_id in errors:
            raise errors[request.session_id](f"{request.session_id} happened")
        if request.session_id == "crash":
            raise RuntimeError("a bug")
        return router_pb2.RoutingDecision(
            session_id=request.session_id, mode=common_pb2.ROUTING_MODE_CLOUD
        )


class _TestService:
    name = "router"
    service_names = ("speckit_reflex.v1.Router",)

    def __init__(self) -> None:
        self.servicer = _SlowRouter()
        self.closed = False

    def register(self, server: aio.Server) -> None:
        router_pb2_grpc.add_RouterServicer_to_server(self.servicer, server)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self.closed = True


def _settings(**kw: object) -> RuntimeSettings:
    return RuntimeSettings(**kw)  # type: ignore[arg-type]


async def test_domain_errors_map_to_their_status_and_unexpected_ones_do_not_leak() -> None:
    running = await create_server(_TestService(), "127.0.0.1:0", _settings())
    try:
        async with aio.insecure_channel(running.address) as ch:
            stub = router_pb2_grpc.RouterStub(ch)
            for sid, code in (
                ("invalid", grpc.StatusCode.INVALID_ARGUMENT),
                ("precondition", grpc.StatusCode.FAILED_PRECONDITION),
                ("unavailable", grpc.StatusCode.UNAVAILABLE),
            ):
                with pytest.raises(aio.AioRpcError) as info:
                    await stub.Decide(router_pb2.DecideRequest(session_id=sid))
                assert info.value.code() == code
                assert info.value.details() == f"{sid} happened"
            with pytest.raises(aio.AioRpcError) as info:
                await stub.Decide(router_pb2.DecideRequest(session_id="crash"))
            assert info.value.code() == grpc.StatusCode.INTERNAL
            assert "a bug" not in (info.value.details() or "")
            assert "server log ref" in (info.value.details() or "")
            ok = await stub.Decide(router_pb2.DecideRequest(session_id="fine"))
            assert ok.session_id == "fine"
    finally:
        await running.stop(0)


async def test_oversized_and_malformed_messages_keep_the_server_serving() -> None:
    running = await create_server(_TestService(), "127.0.0.1:0", _settings(max_message_bytes=4096))
    try:
        async with aio.insecure_channel(running.address) as ch:
            stub = router_pb2_grpc.RouterStub(ch)
            with pytest.raises(aio.AioRpcError) as info:
                await stub.Decide(router_pb2.DecideRequest(session_id="x" * 10_000))
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            raw = ch.unary_unary("/speckit_reflex.v1.Router/Decide")
            with pytest.raises(aio.AioRpcError) as info:
                await raw(b"\xff\xff\xff\xff")
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "malformed request" in (info.value.details() or "")
            assert (
                await stub.Decide(router_pb2.DecideRequest(session_id="after"))
            ).session_id == "after"
    finally:
        await running.stop(0)


async def test_token_auth_rejects_calls_without_the_token_but_not_health() -> None:
    running = await create_server(_TestService(), "127.0.0.1:0", _settings(auth_token="s3cret"))
    try:
        async with aio.insecure_channel(running.address) as ch:
            with pytest.raises(aio.AioRpcError) as info:
                await router_pb2_grpc.RouterStub(ch).Decide(router_pb2.DecideRequest())
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        async with open_channel(ChannelConfig(running.address, token="wrong")) as ch:
            with pytest.raises(aio.AioRpcError) as info:
                await router_pb2_grpc.RouterStub(ch).Decide(router_pb2.DecideRequest())
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        async with open_channel(ChannelConfig(running.address, token="s3cret")) as ch:
            reply = await router_pb2_grpc.RouterStub(ch).Decide(
                router_pb2.DecideRequest(session_id="ok")
            )
            assert reply.session_id == "ok"
    finally:
        await running.stop(0)


@pytest.mark.parametrize("addr", ["0.0.0.0:0", "[::]:0"])
async def test_a_non_loopback_address_needs_a_token_tls_or_insecure(addr: str) -> None:
    with pytest.raises(InsecureListenRefused) as info:
        await create_server(_TestService(), addr, _settings())
    assert "--insecure" in str(info.value) and "\n" not in str(info.value)
    for settings, insecure in ((_settings(), True), (_settings(auth_token="s3cret"), False)):
        running = await create_server(_TestService(), addr, settings, insecure=insecure)
        await running.stop(0)
    # Loopback needs neither.
    running = await create_server(_TestService(), "127.0.0.1:0", _settings())
    await running.stop(0)


def test_serve_refuses_a_wildcard_address_without_a_token_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPECKIT_")}
    env.update({"SPECKIT_HOME": str(tmp_path / ".speckit"), "SPECKIT_ROUTER_ADDR": "0.0.0.0:0"})
    proc = subprocess.run(
        [sys.executable, "-m", "speckit_reflex.cli.main", "serve", "router"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert "router: refusing to listen on non-loopback 0.0.0.0:0" in line and "--insecure" in line


def _make_certs(folder: Path) -> dict[str, Path]:
    """A CA, a server cert for 127.0.0.1/localhost and a client cert, via openssl."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=speckit-test-ca",
    )
    (folder / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for who in ("server", "client"):
        run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{who}.key",
            "-out",
            f"{who}.csr",
            "-subj",
            f"/CN={who}",
        )
        run(
            "x509",
            "-req",
            "-in",
            f"{who}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{who}.pem",
            "-days",
            "1",
            "-extfile",
            "san.ext",
        )
    return {
        n: folder / n for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")
    }


async def test_mutual_tls(tmp_path: Path) -> None:
    certs = _make_certs(tmp_path)
    settings = _settings(
        tls_cert=str(certs["server.pem"]),
        tls_key=str(certs["server.key"]),
        tls_client_ca=str(certs["ca.pem"]),
    )
    running = await create_server(_TestService(), "127.0.0.1:0", settings)
    try:
        good = ChannelConfig(
            running.address,
            tls_ca=str(certs["ca.pem"]),
            tls_cert=str(certs["client.pem"]),
            tls_key=str(certs["client.key"]),
        )
        async with open_channel(good) as ch:
            reply = await router_pb2_grpc.RouterStub(ch).Decide(
                router_pb2.DecideRequest(session_id="tls")
            )
            assert reply.session_id == "tls"
        no_client_cert = ChannelConfig(running.address, tls_ca=str(certs["ca.pem"]))
        async with open_channel(no_client_cert) as ch:
            with pytest.raises(aio.AioRpcError) as info:
                await router_pb2_grpc.RouterStub(ch).Decide(router_pb2.DecideRequest(), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await running.stop(0)


async def test_graceful_stop_finishes_50_inflight_rpcs_and_flips_health_first() -> None:
    service = _TestService()
    running = await create_server(service, "127.0.0.1:0", _settings())
    async with aio.insecure_channel(running.address) as ch:
        stub = router_pb2_grpc.RouterStub(ch)
        health = health_pb2_grpc.HealthStub(ch)
        calls = [
            asyncio.ensure_future(
                stub.Decide(router_pb2.DecideRequest(session_id=f"s{i}", attempt=800))
            )
            for i in range(50)
        ]
        await eventually(lambda: service.servicer.started >= 50, what="50 calls in the servicer")
        watch = health.Watch(health_pb2.HealthCheckRequest(service="speckit_reflex.v1.Router"))
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.ensure_future(running.stop(grace=5))
        # Health flips at the start of the stop (ms); 10 s is margin for a loaded machine.
        second = await asyncio.wait_for(watch.read(), 10)
        assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
        results = await asyncio.gather(*calls, return_exceptions=True)
        await stopping
    failures = [r for r in results if isinstance(r, BaseException)]
    assert failures == []
    assert sorted(r.session_id for r in results) == sorted(f"s{i}" for i in range(50))
    assert service.closed


def _ports_free(ports: tuple[int, ...]) -> bool:
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def test_serve_all_on_default_addresses_health_reflection_and_sigterm(tmp_path: Path) -> None:
    if not _ports_free(DEFAULT_PORTS):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("default ports 50051-50054 are taken on the CI machine")
        pytest.skip("default ports 50051-50054 are in use on this machine")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPECKIT_")}
    env.update({"SPECKIT_HOME": str(tmp_path / ".speckit"), "SPECKIT_GRACE_S": "3"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "speckit_reflex.cli.main", "serve", "all"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        names: set[str] = set()
        deadline = time.monotonic() + 60
        for port in DEFAULT_PORTS:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                while True:
                    try:
                        status = health_pb2_grpc.HealthStub(ch).Check(
                            health_pb2.HealthCheckRequest(), timeout=1
                        )
                        break
                    except grpc.RpcError:
                        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                        assert time.monotonic() < deadline, "services did not come up"
                        time.sleep(0.2)
                assert status.status == health_pb2.HealthCheckResponse.SERVING
                reflect = reflection_pb2_grpc.ServerReflectionStub(ch)
                reply = next(
                    iter(
                        reflect.ServerReflectionInfo(
                            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
                        )
                    )
                )
                names |= {s.name for s in reply.list_services_response.service}
        assert {
            "speckit_reflex.v1.Router",
            "speckit_reflex.v1.Inference",
            "speckit_reflex.v1.PatchLoop",
            "speckit_reflex.v1.Capsule",
        } <= names
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=3 + 30)
        # Limit: the 3 s grace bounds the drain (nothing is in flight here, so it
        # takes ms), plus 7 s of margin to close the four services and exit on a
        # loaded 2-core machine; a stop that ignored SIGTERM would hang instead.
        assert time.monotonic() - started <= 3 + 7
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
