"""Whole-system reliability checks (docs/reliability.md #3 failover, #12 secrets), on
the four real services over gRPC with small HTTP model servers that answer
like SGLang, vLLM and an OpenAI-compatible cloud (tests/inference/fakes.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import pytest
from google.protobuf.json_format import MessageToJson

from speckit_reflex.clients.capsule import CapsuleClient, window
from speckit_reflex.clients.inference import InferenceClient
from speckit_reflex.clients.patchloop import PatchLoopClient
from speckit_reflex.clients.router import RouterClient
from speckit_reflex.policy import load_policy
from speckit_reflex.v1 import common_pb2, patchloop_pb2
from tests.inference.fakes import FakeModelServer
from tests.verdict_evidence import record_bakeoff
from tests.waiting import eventually

PA = common_pb2.EVENT_TYPE_PATCH_ATTEMPT
LR = common_pb2.EVENT_TYPE_LOOP_RESULT
LLM = common_pb2.EVENT_TYPE_LLM_CALL
KEY_ENV = "SPECKIT_TEST_SYSTEM_CLOUD_KEY"
SECRET = "sk-live-SYSTEMSECRET-7f3a9c"

CRATE_TOML = '[package]\nname = "sys_rect"\nversion = "0.1.0"\nedition = "2021"\n\n[workspace]\n'
CRATE_LIB = """pub struct Rect {
    pub width: u32,
    pub height: u32,
}

impl Rect {
    /// Perimeter of the rectangle.
    pub fn perimeter(&self) -> u32 {
        2 * (self.width + self.hieght)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perimeter() {
        assert_eq!(Rect { width: 2, height: 5 }.perimeter(), 14);
    }
}
"""
FIXED = {
    "edits": [
        {
            "file": "src/lib.rs",
            "line_start": 9,
            "line_end": 9,
            "replacement": "        2 * (self.width + self.height)",
        }
    ]
}
NOOP = {
    "edits": [
        {
            "file": "src/lib.rs",
            "line_start": 9,
            "line_end": 9,
            "replacement": "        2 * (self.width + self.hieght) ",
        }
    ]
}


def make_crate(root: Path) -> Path:
    (root / "src").mkdir(parents=True)
    (root / "Cargo.toml").write_text(CRATE_TOML)
    (root / "src" / "lib.rs").write_text(CRATE_LIB)
    return root


def write_policy(
    path: Path,
    backends: list[tuple[str, str, str]],
    cloud_url: str,
    *,
    max_failures: int,
    capture: str = "full_io",
    model: str = "local-model",
    timeout_ms: int = 10000,
    max_attempts: int = 4,
    probe_timeout_ms: int = 2000,
) -> Path:
    entries = ", ".join(
        f'{{ name = "{n}", kind = "{k}", endpoint = "{u}", models = ["{model}"] }}'
        for n, k, u in backends
    )
    path.write_text(f"""
[routing.reflex]
enabled = true
model = "{model}"
timeout_ms = {timeout_ms}
max_failures = {max_failures}
backends = [{entries}]

[routing.cloud]
endpoint = "{cloud_url}"
model = "cloud-model"
api_key_env = "{KEY_ENV}"

[routing.health]
probe_interval_s = 0.5
stale_after_s = 30
cooldown_s = 30
probe_timeout_ms = {probe_timeout_ms}

[routing.verdicts]
min_samples = 3
refresh_s = 1

[capture]
mode = "{capture}"

[inference]
max_validation_retries = 0

[patchloop]
max_attempts = {max_attempts}
compiler_fast_path = false
""")
    return path


async def start_stack(
    services_factory, tmp_path: Path, policy_path: Path, model: str = "local-model"
):
    """All four services on one SQLite database, with passing bakeoff evidence
    for `model`, once the Router routes reflex."""
    db = f"sqlite:///{tmp_path / 'system.db'}"
    policy = load_policy(policy_path)
    svc = await services_factory(
        ["capsule", "inference", "router", "patchloop"], database_url=db, policy=policy
    )
    capsule = CapsuleClient(svc.ctx.channel("capsule"))
    # A passing bakeoff on the weights each backend reports (a verdict holds
    # for the identity it was formed on).
    health = await InferenceClient(svc.ctx.channel("inference")).health(refresh=True, timeout=30)
    for identity in sorted({b.identity.key for b in health.backends}):
        await record_bakeoff(
            capsule, model, 4, latency_ms=50.0, identity=identity, cloud_model="cloud-model"
        )
    await svc.servers["router"].service.refresher.refresh_all()
    router = RouterClient(svc.ctx.channel("router"))
    deadline = time.monotonic() + 60
    while True:
        d = await router.decide(
            stage=common_pb2.STAGE_IMPLEMENT,
            role=common_pb2.ROLE_IMPLEMENTER,
            session_id="readiness",
            attempt=1,
            timeout=10,
        )
        if d.mode == common_pb2.ROUTING_MODE_REFLEX:
            return svc, capsule
        assert time.monotonic() < deadline, f"router never routed reflex: {d.detail}"
        await asyncio.sleep(0.2)


async def run_events(capsule: CapsuleClient, run_id: str, want: int) -> list[common_pb2.Event]:
    """The run's events once `want` PatchAttempt and LoopResult events are in Capsule
    (the services deliver them in batches, after the run's stream has ended)."""
    return await eventually(
        lambda: capsule.all_events(run_id=run_id),
        lambda events: sum(e.type in (PA, LR) for e in events) >= want,
        what=f"{want} attempt and result events of {run_id}",
        interval_s=0.1,
    )


async def test_primary_killed_mid_run_next_attempt_fails_over_nothing_lost_or_double_counted(
    services_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held_port
) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-test")
    # On a port held to the end of the test: once stopped, the primary's address
    # refuses connections; no server started later can take it and answer.
    primary = await FakeModelServer(
        kind="sglang", models=["local-model"], reply=json.dumps(NOOP), port=held_port().port
    ).start()
    secondary = await FakeModelServer(
        kind="vllm", models=["local-model"], reply=json.dumps(FIXED)
    ).start()
    cloud = await FakeModelServer(
        kind="openai", models=["cloud-model"], reply=json.dumps(FIXED)
    ).start()
    try:
        pol = write_policy(
            tmp_path / "p.toml",
            [("sglang", "sglang", primary.base_url), ("vllm", "vllm", secondary.base_url)],
            cloud.base_url,
            max_failures=3,
        )
        svc, capsule = await start_stack(services_factory, tmp_path, pol)
        ws = make_crate(tmp_path / "ws")
        client = PatchLoopClient(svc.ctx.channel("patchloop"))
        seen: list[patchloop_pb2.RunEvent] = []
        result = None
        async for ev in client.run(str(ws), run_id="failover-run", session_id="failover"):
            seen.append(ev)
            if ev.WhichOneof("kind") == "model_call" and ev.attempt == 1:
                # The primary dies right after answering attempt 1.
                await primary.stop()
            if ev.WhichOneof("kind") == "result":
                result = ev.result
        assert result is not None
        assert result.outcome == patchloop_pb2.OUTCOME_FIXED, result.reason
        assert result.fixed_by == patchloop_pb2.FIX_SOURCE_REFLEX
        assert result.attempts == 2 and not result.escalated
        assert len(primary.chats()) == 1 and len(secondary.chats()) == 1
        assert cloud.connections_total == 0

        events = await run_events(capsule, "failover-run", result.attempts + 1)
        attempts = sorted((e for e in events if e.type == PA), key=lambda e: e.attempt)
        # Every attempt is recorded exactly once: none lost, none double-counted.
        assert [a.attempt for a in attempts] == [1, 2]
        assert [(a.backend, a.success) for a in attempts] == [("sglang", False), ("vllm", True)]
        assert len({a.id for a in events}) == len(events)
        # The failover and its reason are on the record (GR-005).
        calls = [e for e in events if e.type == LLM and e.attempt == 2]
        assert len(calls) == 1 and calls[0].backend == "vllm"
        assert "sglang" in MessageToJson(calls[0].payload) + calls[0].reason
    finally:
        for server in (primary, secondary, cloud):
            await server.stop()


async def test_an_api_key_never_reaches_events_logs_reports_or_the_database(
    services_factory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(KEY_ENV, SECRET)
    local = await FakeModelServer(
        kind="vllm", models=["local-model"], reply=json.dumps(NOOP)
    ).start()
    cloud = await FakeModelServer(
        kind="openai", models=["cloud-model"], reply=json.dumps(FIXED)
    ).start()
    try:
        pol = write_policy(
            tmp_path / "p.toml",
            [("vllm", "vllm", local.base_url)],
            cloud.base_url,
            max_failures=2,
            capture="full_io",
        )
        svc, capsule = await start_stack(services_factory, tmp_path, pol)
        ws = make_crate(tmp_path / "ws")
        _, result = await PatchLoopClient(svc.ctx.channel("patchloop")).run_to_end(
            str(ws), run_id="secret-run", session_id="secret", timeout_s=120
        )
        # Reflex twice, then the cloud fixes it: the key was really used.
        assert (
            result.outcome == patchloop_pb2.OUTCOME_FIXED
            and result.fixed_by == patchloop_pb2.FIX_SOURCE_CLOUD
        )
        assert cloud.authorizations and all(SECRET in a for a in cloud.authorizations)

        events = await run_events(capsule, "secret-run", result.attempts + 1)
        assert any(e.type == LLM and e.mode == common_pb2.ROUTING_MODE_CLOUD for e in events)
        assert any(e.request.fields for e in events if e.type == LLM), "full_io stores requests"
        report = await capsule.write_report(win=window("1h"), out_dir="eval")
        await svc.stop()

        haystacks = {
            "events": "".join(e.SerializeToString().decode("latin-1") for e in events),
            "logs": caplog.text,
            "report.json": await asyncio.to_thread(Path(report.json_path).read_text),
            "report.md": await asyncio.to_thread(Path(report.markdown_path).read_text),
            "database": (await asyncio.to_thread((tmp_path / "system.db").read_bytes)).decode(
                "latin-1"
            ),
        }
        leaks = [
            name for name, text in haystacks.items() if SECRET in text or "SYSTEMSECRET" in text
        ]
        assert leaks == []
    finally:
        await local.stop()
        await cloud.stop()
