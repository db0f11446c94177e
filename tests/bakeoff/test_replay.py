"""Replay without a model: the refusal when calls were not captured in full
(real Capsule and CLI), and the verdict's statuses against the thresholds."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from speckit_reflex.bakeoff.replay import Thresholds, judge
from speckit_reflex.clients.capsule import CapsuleClient
from speckit_reflex.policy import load_policy
from speckit_reflex.policy.loader import snapshot
from speckit_reflex.policy.model import Policy
from speckit_reflex.v1 import capsule_pb2, common_pb2

from .conftest import run_speckit, speckit_env

SERVICES = ["capsule", "inference", "router", "patchloop"]
T = Thresholds(
    p95_latency_ms=2000.0,
    success_parity_percent=95.0,
    json_schema_compliance_percent=99.0,
    absolute_success_percent=None,
    min_samples=3,
)


def figures(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "replies": 5,
        "p95_latency_ms": 800.0,
        "json_compliance_rate": 100.0,
        "patches_judged": 5,
        "patch_success_rate": 80.0,
    }
    return {**base, **over}


def status(verdict: dict, name: str) -> str:  # type: ignore[type-arg]
    return next(r["status"] for r in verdict["results"] if r["name"] == name)


def test_verdict_pass_fail_and_not_judged() -> None:
    assert judge(figures(), figures(), T)["status"] == "pass"
    slow = judge(figures(), figures(p95_latency_ms=2500.0), T)
    assert slow["status"] == "fail" and status(slow, "p95_latency_ms") == "fail"
    worse = judge(figures(), figures(patch_success_rate=40.0), T)
    assert status(worse, "success_parity_percent") == "fail" and worse["status"] == "fail"
    few = judge(figures(), figures(replies=2, patches_judged=2), T)
    assert few["status"] == "not_judged" and not few["passed"]
    assert "fewer than the 3 required" in next(r["message"] for r in few["results"])
    # The recorded replies fixed nothing and there is no absolute baseline: never a pass.
    no_base = judge(figures(patch_success_rate=0.0), figures(), T)
    assert status(no_base, "success_parity_percent") == "not_judged"
    assert no_base["status"] == "not_judged"
    silent = judge(figures(), figures(replies=0, p95_latency_ms=None), T)
    assert status(silent, "p95_latency_ms") == "not_judged"
    assert silent["status"] == "not_judged" and not silent["passed"]


async def test_replay_refuses_calls_not_captured_in_full(
    services_factory, sqlite_url: str, tmp_path: Path
) -> None:
    policy = load_policy(None, environ={"SPECKIT_POLICY__CAPTURE__MODE": "hash"})
    svc = await services_factory(SERVICES, database_url=sqlite_url, policy=policy)
    ev = common_pb2.Event(
        id="call-1", type=common_pb2.EVENT_TYPE_LLM_CALL, model="m", run_id="r", attempt=1
    )
    ev.request.update({"messages": [{"role": "user", "content": "fix it"}], "params": {}})
    await CapsuleClient(svc.ctx.channel("capsule")).append_events([ev])
    env = speckit_env({name: svc.addr(name) for name in SERVICES})
    run = await asyncio.to_thread(
        run_speckit,
        [
            "reflex",
            "replay",
            "--model",
            "candidate",
            "--since",
            "1h",
            "--report-dir",
            str(tmp_path),
        ],
        env,
    )
    assert run.code == 1
    assert "replay refused" in run.stderr and "capture.mode was not full_io" in run.stderr
    assert not await asyncio.to_thread(lambda: list(tmp_path.glob("reflex-replay-*")))


async def test_replay_of_an_unreachable_candidate_writes_its_report_and_of_an_unknown_one_refuses(
    services_factory, sqlite_url: str, tmp_path: Path
) -> None:
    # One call captured in full. The candidate's backend (the built-in policy's
    # local one) has no server, so the call is an error of the candidate, and
    # replay still writes its report and names both files of it. A model no
    # backend serves is refused at once, before any report.
    policy = load_policy(None, environ={"SPECKIT_POLICY__CAPTURE__MODE": "full_io"})
    svc = await services_factory(SERVICES, database_url=sqlite_url, policy=policy)
    ev = common_pb2.Event(
        id="call-1", type=common_pb2.EVENT_TYPE_LLM_CALL, model="m", run_id="r", attempt=1
    )
    ev.request.update({"messages": [{"role": "user", "content": "fix it"}], "params": {}})
    await CapsuleClient(svc.ctx.channel("capsule")).append_events([ev])
    env = speckit_env({name: svc.addr(name) for name in SERVICES})
    args = ["reflex", "replay", "--model", policy.policy.routing.reflex.chain[0], "--since", "1h"]
    out = tmp_path / "eval"
    run = await asyncio.to_thread(run_speckit, [*args, "--report-dir", str(out)], env)
    assert run.code == 0, run.stderr
    written = sorted(await asyncio.to_thread(lambda: list(out.glob("reflex-replay-*"))))
    assert [p.suffix for p in written] == [".json", ".md"], written
    for path in written:
        assert f"{path}" in run.stdout, run.stdout
    doc = json.loads(await asyncio.to_thread(written[0].read_text))
    (call,) = doc["calls"]
    assert call["call_id"] == "call-1" and not call["candidate"]["replied"], call
    assert call["candidate"]["error"], call
    assert (doc["figures"]["candidate"]["errors"], doc["figures"]["candidate"]["replies"]) == (1, 0)
    typo = await asyncio.to_thread(
        run_speckit,
        [*args[:3], "qwen-typo", *args[4:], "--report-dir", str(tmp_path / "typo")],
        env,
    )
    assert typo.code == 1
    (line,) = [ln for ln in typo.stderr.splitlines() if ln.startswith("error: ")]
    assert "replay refused" in line and "'qwen-typo'" in line and "reflex models" in line, line
    assert not (tmp_path / "typo").exists()


async def test_replay_skips_recorded_requests_it_cannot_resend(
    services_factory, sqlite_url: str, tmp_path: Path
) -> None:
    """LLMCall events are written by whoever holds the token (AppendEvents), and
    a request document is any JSON: one that is not a request the adapter
    could have sent is counted as not replayable, never a crash of the whole
    replay (nor a request with what it says)."""
    policy = load_policy(None, environ={"SPECKIT_POLICY__CAPTURE__MODE": "full_io"})
    svc = await services_factory(SERVICES, database_url=sqlite_url, policy=policy)
    hostile = [
        {"messages": "not a list", "params": {}},
        {"messages": [{"role": "user"}], "params": {}},
        {"messages": [{"role": "user", "content": "x"}], "params": {"max_tokens": 1e12}},
        {"messages": [{"role": "user", "content": "x"}], "params": {"temperature": {"a": 1}}},
    ]
    events = []
    for i, request in enumerate(
        [{"messages": [{"role": "user", "content": "fix it"}], "params": {}}, *hostile]
    ):
        ev = common_pb2.Event(
            id=f"call-{i}", type=common_pb2.EVENT_TYPE_LLM_CALL, model="m", run_id="r", attempt=1
        )
        ev.request.update(request)
        events.append(ev)
    await CapsuleClient(svc.ctx.channel("capsule")).append_events(events)
    env = speckit_env({name: svc.addr(name) for name in SERVICES})
    model = policy.policy.routing.reflex.chain[0]
    out = tmp_path / "eval"
    run = await asyncio.to_thread(
        run_speckit,
        ["reflex", "replay", "--model", model, "--since", "1h", "--report-dir", str(out), "--json"],
        env,
    )
    assert run.code == 0, run.stderr[-3000:]
    doc = run.json()
    assert [c["call_id"] for c in doc["calls"]] == ["call-0"], doc["calls"]
    assert doc["calls_not_captured"] == len(hostile)


async def test_a_patch_patchloop_refuses_to_judge_is_not_judged_not_a_failed_replay(
    services_factory, sqlite_url: str, tmp_path: Path
) -> None:
    """A recorded patch call whose run's capture CheckPatch refuses (captures
    and events are stored by any token holder: here a build profile the
    policy lacks) is `not_judged` with the answer; the replay goes on."""
    policy = load_policy(None, environ={"SPECKIT_POLICY__CAPTURE__MODE": "full_io"})
    svc = await services_factory(SERVICES, database_url=sqlite_url, policy=policy)
    capsule = CapsuleClient(svc.ctx.channel("capsule"))
    planted = capsule_pb2.RunCapture(run_id="planted-run", build_profile="sh -c id")
    planted.files.add(path="Cargo.toml", content='[package]\nname = "p"\nversion = "0.1.0"\n')
    planted.files.add(path="src/lib.rs", content="pub fn f() -> u32 { 1u8 }\n")
    await capsule.put_run_capture(planted)
    ev = common_pb2.Event(
        id="call-p", type=common_pb2.EVENT_TYPE_LLM_CALL, model="m", run_id="planted-run", attempt=1
    )
    ev.request.update(
        {
            "messages": [{"role": "user", "content": "fix it"}],
            "params": {"schema_name": "rust_patch", "json_schema": "{}"},
        }
    )
    ev.response.update({"finish_reason": "stop", "content": '{"edits": []}'})
    await capsule.append_events([ev])
    env = speckit_env({name: svc.addr(name) for name in SERVICES})
    model = policy.policy.routing.reflex.chain[0]
    out = tmp_path / "eval"
    run = await asyncio.to_thread(
        run_speckit,
        ["reflex", "replay", "--model", model, "--since", "1h", "--report-dir", str(out), "--json"],
        env,
    )
    assert run.code == 0, run.stderr[-3000:]
    (call,) = run.json()["calls"]
    patch = call["recorded"]["patch"]
    assert patch.startswith("not_judged: CheckPatch refused it") and "build_profile" in patch, call


def test_thresholds_are_the_policy_snapshots_own() -> None:
    """Replay judges against the thresholds the Router serves, never defaults of its own."""
    policy = Policy()
    t = Thresholds.from_policy(snapshot(policy))
    want = policy.routing.reflex.thresholds
    assert (t.p95_latency_ms, t.success_parity_percent, t.json_schema_compliance_percent) == (
        want.p95_latency_ms,
        want.success_parity_percent,
        want.json_schema_compliance_percent,
    )
    assert t.min_samples == policy.routing.verdicts.min_samples
    bare = snapshot(policy)
    del bare["governance"]["routing"]["reflex"]["thresholds"]["success_parity_percent"]
    try:
        Thresholds.from_policy(bare)
    except ValueError as exc:
        assert "routing.reflex.thresholds.success_parity_percent" in str(exc)
    else:
        raise AssertionError("a snapshot without the parity threshold was judged with a default")
