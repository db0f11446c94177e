"""docs/reliability.md #7 (kill -9 during ingest) and #8 (database down).

#8 does not stop the machine's PostgreSQL (others use it): Capsule reaches
Postgres through a TCP proxy in this test, which is cut and restored — a real
connection failure, seen by the real driver.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import psycopg
import pytest
from capsule_helpers import REFLEX, attempt, make_event

from speckit_reflex.capsule import migrate
from speckit_reflex.clients.capsule import CapsuleClient, window
from speckit_reflex.clients.health import is_serving
from speckit_reflex.policy import load_policy
from speckit_reflex.v1 import common_pb2
from tests.ports import HeldPort, StartFailed, pick_port, wait_ready

pytestmark = pytest.mark.postgres


class TcpProxy:
    """127.0.0.1:<port> → target; `cut()` drops every connection and stops
    listening, `restore()` listens again on the same port.

    It listens on a port the test holds (tests/ports.HeldPort): while cut the
    port refuses connections, and no other server can take it before `restore()`."""

    def __init__(self, target_host: str, target_port: int, port: HeldPort):
        self.target = (target_host, target_port)
        self.port = port.port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        self._writers -= {writer, up_writer}

    async def restore(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True, reuse_port=True
        )

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()


async def test_database_down_answers_unavailable_and_recovers_without_restart(
    services_factory, postgres_url, held_port
):
    migrate.upgrade_url(postgres_url)
    proxy = TcpProxy("127.0.0.1", 5432, held_port())
    await proxy.restore()
    via_proxy = postgres_url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{proxy.port}/")
    svc = await services_factory(["capsule"], database_url=via_proxy, policy=load_policy(None))
    capsule = CapsuleClient(svc.ctx.channel("capsule"))
    assert (await capsule.append_events([attempt(REFLEX, "m", 1.0)])).inserted == 1

    await proxy.cut()
    lost = [attempt(REFLEX, "m", 2.0) for _ in range(3)]
    for call in (
        lambda: capsule.append_events(lost),
        lambda: capsule.bakeoff_stats(window("1h")),
        lambda: capsule.query_events(),
        lambda: capsule.usage(window("1h")),
    ):
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call()
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
        assert "database unavailable" in err.value.details()
        # Fails fast, does not hang the caller until its 10 s deadline: the cut
        # proxy refuses at once (ms), and Capsule's connect_timeout (3 s) bounds
        # a connect that hangs; 4 s of margin for a loaded 2-core machine.
        assert time.monotonic() - started < 3.0 + 4.0

    await proxy.restore()
    reply = await capsule.append_events(lost)  # the same service, no restart
    assert (reply.inserted, reply.duplicates) == (3, 0)
    assert (await capsule.bakeoff_stats(window("1h"))).reflex.total_attempts == 4
    await proxy.cut()


def _speckit() -> list[str]:
    exe = Path(sys.executable).with_name("speckit")
    return [str(exe)] if exe.exists() else [shutil.which("speckit") or "speckit"]


class CapsuleProcess:
    """`speckit serve capsule` as a child process, restartable after a kill.

    It must be told its port. A restart asks for the same one again (the
    client keeps its address, as the services' EventSink does); when the child
    dies before serving (the port taken in the window since the kill, see
    tests/ports.py), it starts on a fresh port and `addr` changes."""

    def __init__(self, postgres_url: str, tmp_path: Path):
        self.env = {
            **os.environ,
            "SPECKIT_DATABASE_URL": postgres_url,
            "SPECKIT_HOME": str(tmp_path / ".speckit"),
            "SPECKIT_LOG_LEVEL": "WARNING",
        }
        self.cwd = tmp_path
        self.addr = f"127.0.0.1:{pick_port()}"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        for tries in range(1, 4):
            self.proc = await asyncio.create_subprocess_exec(
                *_speckit(),
                "serve",
                "capsule",
                env={**self.env, "SPECKIT_CAPSULE_ADDR": self.addr},
                cwd=self.cwd,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                await wait_ready(
                    lambda: is_serving(self.addr, timeout_s=1.0), self._exited, what="capsule"
                )
                return
            except StartFailed:
                if tries == 3:
                    raise
                self.addr = f"127.0.0.1:{pick_port()}"

    def _exited(self) -> str | None:
        code = self.proc.returncode if self.proc else None
        return None if code is None else f"exit {code}"

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await asyncio.wait_for(self.proc.wait(), 10)


async def test_kill_9_during_ingest_loses_and_duplicates_nothing(postgres_url, tmp_path: Path):
    migrate.upgrade_url(postgres_url)
    child = CapsuleProcess(postgres_url, tmp_path)
    total, batch_size = 10_000, 100
    events = [
        make_event(
            common_pb2.EVENT_TYPE_LLM_CALL, id=f"crash-{i:05d}", mode=REFLEX, prompt_tokens=i
        )
        for i in range(total)
    ]
    acked, kills = 0, 0
    channel: grpc.aio.Channel | None = None
    try:
        await child.start()
        channel = grpc.aio.insecure_channel(child.addr)
        capsule = CapsuleClient(channel, timeout_s=3.0)
        for start in range(0, total, batch_size):
            if kills < 2 and acked >= (3000 if kills == 0 else 7000):
                # Crash with a batch in flight: send it, then SIGKILL at once. (Any
                # timing is a valid crash; the short pause makes "in flight" likely.)
                pending = asyncio.ensure_future(
                    capsule.append_events(events[start : start + batch_size])
                )
                await asyncio.sleep(0.002)
                await child.kill()
                await asyncio.gather(pending, return_exceptions=True)
                kills += 1
                before = child.addr
                await child.start()
                if child.addr != before:  # restarted on a fresh port
                    await channel.close()
                    channel = grpc.aio.insecure_channel(child.addr)
                    capsule = CapsuleClient(channel, timeout_s=3.0)
            # Acknowledged-with-retry, as the services' EventSink does; the
            # child is serving again, so retries are few: 60 s is all margin.
            deadline = time.monotonic() + 60
            while True:
                try:
                    await capsule.append_events(events[start : start + batch_size])
                    break
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() in (
                        grpc.StatusCode.UNAVAILABLE,
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                    )
                    assert time.monotonic() < deadline, f"batch at {start} never acknowledged"
                    await asyncio.sleep(0.1)
            acked += batch_size
    finally:
        if channel is not None:
            await channel.close()
        await child.kill()
    assert kills == 2 and acked == total
    with psycopg.connect(postgres_url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        rows, distinct, tokens = conn.execute(
            "SELECT count(*), count(DISTINCT id), sum(prompt_tokens) FROM events"
        ).fetchone()
    assert (rows, distinct) == (total, total)
    assert tokens == sum(range(total))
