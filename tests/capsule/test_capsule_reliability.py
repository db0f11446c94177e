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
from speckit_reflex.clients.health import wait_serving
from speckit_reflex.policy import load_policy
from speckit_reflex.v1 import common_pb2
from tests.ports import pick_port

pytestmark = pytest.mark.postgres


class TcpProxy:
    """127.0.0.1:<port> → target; `cut()` drops every connection and stops
    listening, `restore()` listens again on the same port."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.port = 0
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
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()


async def test_database_down_answers_unavailable_and_recovers_without_restart(
    services_factory, postgres_url
):
    migrate.upgrade_url(postgres_url)
    proxy = TcpProxy("127.0.0.1", 5432)
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
        assert time.monotonic() - started < 5.0  # fails fast, does not hang the caller

    await proxy.restore()
    reply = await capsule.append_events(lost)  # the same service, no restart
    assert (reply.inserted, reply.duplicates) == (3, 0)
    assert (await capsule.bakeoff_stats(window("1h"))).reflex.total_attempts == 4
    await proxy.cut()


def _speckit() -> list[str]:
    exe = Path(sys.executable).with_name("speckit")
    return [str(exe)] if exe.exists() else [shutil.which("speckit") or "speckit"]


async def test_kill_9_during_ingest_loses_and_duplicates_nothing(postgres_url, tmp_path: Path):
    migrate.upgrade_url(postgres_url)
    # The child must be told its port, and each restart binds it again: a window
    # (tests/ports.py) in which another process could take it; wait_serving would then fail.
    addr = f"127.0.0.1:{pick_port()}"
    env = {
        **os.environ,
        "SPECKIT_CAPSULE_ADDR": addr,
        "SPECKIT_DATABASE_URL": postgres_url,
        "SPECKIT_HOME": str(tmp_path / ".speckit"),
        "SPECKIT_LOG_LEVEL": "WARNING",
    }

    def spawn() -> subprocess.Popen:
        return subprocess.Popen(
            [*_speckit(), "serve", "capsule"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    proc = spawn()
    total, batch_size = 10_000, 100
    events = [
        make_event(
            common_pb2.EVENT_TYPE_LLM_CALL, id=f"crash-{i:05d}", mode=REFLEX, prompt_tokens=i
        )
        for i in range(total)
    ]
    acked, kills = 0, 0
    try:
        await wait_serving(addr)
        async with grpc.aio.insecure_channel(addr) as ch:
            capsule = CapsuleClient(ch, timeout_s=3.0)
            for start in range(0, total, batch_size):
                if kills < 2 and acked >= (3000 if kills == 0 else 7000):
                    # Crash with a batch in flight: send it, then SIGKILL at once.
                    pending = asyncio.ensure_future(
                        capsule.append_events(events[start : start + batch_size])
                    )
                    await asyncio.sleep(0.002)
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(timeout=10)
                    await asyncio.gather(pending, return_exceptions=True)
                    kills += 1
                    proc = spawn()
                while True:  # acknowledged-with-retry, as the services' EventSink does
                    try:
                        await capsule.append_events(events[start : start + batch_size])
                        break
                    except grpc.aio.AioRpcError as exc:
                        assert exc.code() in (
                            grpc.StatusCode.UNAVAILABLE,
                            grpc.StatusCode.DEADLINE_EXCEEDED,
                        )
                        await asyncio.sleep(0.1)
                acked += batch_size
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert kills == 2 and acked == total
    with psycopg.connect(postgres_url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        rows, distinct, tokens = conn.execute(
            "SELECT count(*), count(DISTINCT id), sum(prompt_tokens) FROM events"
        ).fetchone()
    assert (rows, distinct) == (total, total)
    assert tokens == sum(range(total))
