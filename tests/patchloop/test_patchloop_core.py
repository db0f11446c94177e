"""The loop core against real cargo builds, with in-memory Router and model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from patchloop_support import (
    FIXED_LINE,
    NOOP_LINE,
    ScriptedInference,
    ScriptedRouter,
    kinds,
    reply,
    run_all,
    tree_digest,
)

from speckit_reflex.errors import InvalidArgument, NotFound
from speckit_reflex.patchloop.ports import ModelCallFailed
from speckit_reflex.v1 import common_pb2, patchloop_pb2

PA = common_pb2.EVENT_TYPE_PATCH_ATTEMPT
LR = common_pb2.EVENT_TYPE_LOOP_RESULT


def by_mode(reflex: dict, cloud: dict | ModelCallFailed):
    """A model whose reply depends on the routed mode."""

    def answer(request):
        if request.mode == common_pb2.ROUTING_MODE_CLOUD:
            return cloud if isinstance(cloud, ModelCallFailed) else reply(cloud)
        return reply(reflex)

    return answer


async def test_fixed_by_reflex_on_first_attempt(crate, make_loop):
    ws = crate("field_typo")
    before = tree_digest(ws)
    loop, _router, _inference, events = make_loop()
    evs, result = await run_all(
        loop, workspace=str(ws), session_id="s1", task_id="t1", bakeoff_run_id="b1"
    )

    assert result.outcome == patchloop_pb2.OUTCOME_FIXED
    assert result.fixed_by == patchloop_pb2.FIX_SOURCE_REFLEX
    assert result.attempts == 1 and not result.escalated and not result.applied
    assert "-        2 * (self.width + self.hieght)" in result.diff
    assert "+        2 * (self.width + self.height)" in result.diff
    assert tree_digest(ws) == before, "the user's tree is written only when apply is asked"

    finished = kinds(evs, "compile_finished")
    assert [f.error_count for f in finished] == [1, 0]
    assert finished[0].diagnostics[0].code == "E0609"
    assert (finished[0].diagnostics[0].file, finished[0].diagnostics[0].line) == ("src/lib.rs", 9)
    assert [e.seq for e in evs] == list(range(1, len(evs) + 1))

    (attempt,) = events.of_type(PA)
    assert attempt.mode == common_pb2.ROUTING_MODE_REFLEX
    assert attempt.success and attempt.json_valid
    assert (attempt.model, attempt.backend, attempt.attempt) == ("local-model", "local", 1)
    assert (attempt.session_id, attempt.task_id, attempt.bakeoff_run_id) == ("s1", "t1", "b1")
    assert attempt.latency_ms == 12.5 and attempt.ttft_ms == 3.0 and attempt.tokens_per_s == 40.0
    assert attempt.prompt_tokens == 100 and attempt.completion_tokens == 20
    assert not attempt.HasField("cached_tokens"), "unknown cached tokens stay unset"
    assert attempt.payload["errors_before"] == 1 and attempt.payload["errors_after"] == 0
    (loop_result,) = events.of_type(LR)
    assert loop_result.payload["outcome"] == "fixed" and loop_result.payload["fixed_by"] == "reflex"
    assert loop_result.success


async def test_apply_writes_back_only_the_changed_file(crate, make_loop):
    ws = crate("field_typo")
    before = tree_digest(ws)
    loop, *_ = make_loop()
    _, result = await run_all(loop, workspace=str(ws), apply=True)
    assert result.outcome == patchloop_pb2.OUTCOME_FIXED and result.applied
    after = tree_digest(ws)
    assert {k for k in after if after[k] != before.get(k)} == {"src/lib.rs"}
    assert set(after) == set(before), "no stray files (temp files, target/) in the user's tree"
    assert "self.width + self.height)" in (ws / "src/lib.rs").read_text()


async def test_escalates_to_cloud_after_max_failures_and_cloud_fixes(crate, make_loop):
    ws = crate("field_typo")
    loop, router, _inference, events = make_loop(
        inference=ScriptedInference([by_mode(NOOP_LINE, FIXED_LINE)])
    )
    evs, result = await run_all(loop, workspace=str(ws))

    assert [r.consecutive_failures for r in router.requests] == [0, 1, 2]
    assert result.outcome == patchloop_pb2.OUTCOME_FIXED
    assert result.fixed_by == patchloop_pb2.FIX_SOURCE_CLOUD
    assert result.attempts == 3 and result.escalated
    attempts = events.of_type(PA)
    assert [(a.mode, a.success, a.reason) for a in attempts] == [
        (common_pb2.ROUTING_MODE_REFLEX, False, "still_failing"),
        (common_pb2.ROUTING_MODE_REFLEX, False, "still_failing"),
        (common_pb2.ROUTING_MODE_CLOUD, True, ""),
    ]
    assert any("escalated to cloud" in n for n in kinds(evs, "note"))


async def test_gives_up_after_max_attempts_when_cloud_is_unreachable(crate, make_loop):
    ws = crate("field_typo")
    cloud_down = ModelCallFailed("failed_precondition", "no API key in DEEPSEEK_API_KEY")
    loop, _router, _inference, events = make_loop(
        inference=ScriptedInference([by_mode(NOOP_LINE, cloud_down)])
    )
    _evs, result = await run_all(loop, workspace=str(ws), max_attempts=3)

    assert result.outcome == patchloop_pb2.OUTCOME_GAVE_UP
    assert result.attempts == 3 and result.escalated and result.diff == ""
    assert "max_attempts" in result.reason and "no API key" in result.reason
    attempts = events.of_type(PA)
    assert len(attempts) == 3 and not any(a.success for a in attempts)
    assert attempts[2].reason == "model_error" and attempts[2].mode == common_pb2.ROUTING_MODE_CLOUD
    assert events.of_type(LR)[0].payload["outcome"] == "gave_up"


async def test_refused_when_policy_forbids_the_cloud_route(crate, make_loop):
    ws = crate("field_typo")
    router = ScriptedRouter(refuse_cloud="local_only_forbids_cloud: local_only is set")
    loop, _, inference, events = make_loop(
        router=router, inference=ScriptedInference([reply(NOOP_LINE)])
    )
    _, result = await run_all(loop, workspace=str(ws), local_only=True)

    assert result.outcome == patchloop_pb2.OUTCOME_REFUSED
    assert result.reason.startswith("local_only_forbids_cloud:")
    assert all(r.local_only for r in router.requests)
    assert len(inference.requests) == 2, "no model call after the refusal"
    assert events.of_type(LR)[0].payload["outcome"] == "refused"


async def test_retry_prompt_shares_the_prefix_and_varies_sampling(crate, make_loop):
    ws = crate("field_typo")
    loop, _, inference, _ = make_loop(
        inference=ScriptedInference([reply(NOOP_LINE), reply(FIXED_LINE)])
    )
    _, result = await run_all(loop, workspace=str(ws))
    assert result.attempts == 2
    first, second = inference.requests
    assert first.messages[0].content == second.messages[0].content
    tail = "\nReply with the JSON patch."
    assert first.messages[1].content.endswith(tail)
    stable = first.messages[1].content[: -len(tail)]
    assert second.messages[1].content.startswith(stable), "attempt 2 must extend attempt 1's prompt"
    assert "EARLIER ATTEMPTS FAILED" in second.messages[1].content[len(stable) :]
    assert "   9 |         2 * (self.width + self.hieght)" in stable
    assert "error[E0609]" in stable and str(ws) not in stable
    assert (first.temperature, first.HasField("seed")) == (0.0, False)
    assert (second.temperature, second.seed) == (pytest.approx(0.3), 2)
    schema = json.loads(first.json_schema)
    assert schema["properties"]["edits"]["maxItems"] >= 1


async def test_already_clean(crate, make_loop):
    ws = crate("field_typo")
    src = ws / "src/lib.rs"
    src.write_text(src.read_text().replace("hieght", "height"))
    loop, router, _, events = make_loop()
    _, result = await run_all(loop, workspace=str(ws))
    assert result.outcome == patchloop_pb2.OUTCOME_ALREADY_CLEAN
    assert router.requests == [] and events.of_type(PA) == []


async def test_compiler_fast_path_fixes_without_a_model(crate, make_loop):
    ws = crate("missing_mut")
    loop, router, inference, events = make_loop()
    evs, result = await run_all(loop, workspace=str(ws), compiler_fast_path=True)
    assert result.outcome == patchloop_pb2.OUTCOME_FIXED
    assert result.fixed_by == patchloop_pb2.FIX_SOURCE_COMPILER
    assert "+    let mut total = 0;" in result.diff
    assert router.requests == [] and inference.requests == []
    (attempt,) = events.of_type(PA)
    assert attempt.mode == common_pb2.ROUTING_MODE_UNSPECIFIED
    assert attempt.payload["source"] == "compiler" and attempt.success
    assert kinds(evs, "patch_applied")[0].source == patchloop_pb2.FIX_SOURCE_COMPILER


async def test_fast_path_off_goes_to_the_model(crate, make_loop):
    ws = crate("missing_mut")
    fix = {"edits": [{"file": "src/lib.rs", "search": "let total", "replace": "let mut total"}]}
    loop, router, _inference, events = make_loop(inference=ScriptedInference([reply(fix)]))
    _, result = await run_all(loop, workspace=str(ws), compiler_fast_path=False)
    assert result.outcome == patchloop_pb2.OUTCOME_FIXED
    assert result.fixed_by == patchloop_pb2.FIX_SOURCE_REFLEX
    assert len(router.requests) == 1
    assert [a.payload["source"] for a in events.of_type(PA) if "source" in a.payload] == []


async def test_partial_fix_is_kept_and_a_useless_one_reverted(crate, make_loop):
    ws = crate("field_typo")
    src = ws / "src/lib.rs"
    # A second error (line 11) so that fixing one of them is progress.
    src.write_text(
        src.read_text().replace(
            "    }\n}\n\n#[cfg",
            "    }\n    pub fn area(&self) -> u32 { self.width * self.heigth }\n}\n\n#[cfg",
            1,
        )
    )
    fix_one = {"edits": [{"file": "src/lib.rs", "search": "self.heigth", "replace": "self.height"}]}
    useless = {
        "edits": [{"file": "src/lib.rs", "search": "/// Perimeter", "replace": "/// The perimeter"}]
    }
    loop, _, inference, events = make_loop(
        inference=ScriptedInference([reply(fix_one), reply(useless), reply(FIXED_LINE)])
    )
    _, result = await run_all(loop, workspace=str(ws))
    assert result.outcome == patchloop_pb2.OUTCOME_FIXED and result.attempts == 3
    a1, a2, _a3 = events.of_type(PA)
    assert (a1.payload["errors_before"], a1.payload["errors_after"]) == (2, 1)
    assert (a2.payload["errors_before"], a2.payload["errors_after"]) == (1, 1)
    assert "/// The perimeter" not in result.diff, "the useless edit was reverted"
    assert "self.height }" in result.diff
    # Attempt 3 was prompted from the kept state, as attempt 2 was.
    assert (
        inference.requests[2]
        .messages[1]
        .content.startswith(
            inference.requests[1].messages[1].content[: -len("\nReply with the JSON patch.")]
        )
    )


async def test_get_run_returns_finished_run_and_not_found(crate, make_loop):
    ws = crate("field_typo")
    loop, *_ = make_loop()
    evs, _result = await run_all(loop, workspace=str(ws), run_id="run-42")
    status = loop.get_run("run-42")
    assert status.state == patchloop_pb2.RUN_STATE_DONE
    assert status.result.outcome == patchloop_pb2.OUTCOME_FIXED
    assert len(status.events) == len(evs) and status.workspace == str(ws)
    with pytest.raises(NotFound):
        loop.get_run("nope")
    with pytest.raises(InvalidArgument):
        await run_all(loop, workspace=str(ws), run_id="run-42")


async def test_bad_workspace_is_invalid_argument(tmp_path: Path, make_loop):
    loop, *_ = make_loop()
    with pytest.raises(InvalidArgument, match="not a directory"):
        await run_all(loop, workspace=str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidArgument, match=r"no Cargo\.toml"):
        await run_all(loop, workspace=str(tmp_path / "empty"))


async def test_cached_tokens_and_cache_reuse_recorded(crate, make_loop):
    ws = crate("field_typo")
    loop, _, _, events = make_loop(
        inference=ScriptedInference(
            [reply(NOOP_LINE, cached=0), reply(FIXED_LINE, prompt_tokens=400, cached=360)]
        )
    )
    evs, _ = await run_all(loop, workspace=str(ws))
    a1, a2 = events.of_type(PA)
    assert a1.HasField("cached_tokens") and a1.cached_tokens == 0
    assert a2.cached_tokens == 360 and a2.payload["cache_reuse"] == 0.9
    calls = kinds(evs, "model_call")
    assert calls[1].cache_reuse == pytest.approx(0.9) and calls[1].usage.cached_tokens == 360


async def test_verify_profile_must_pass_for_a_fix(crate, make_loop):
    ws = crate("field_typo")
    compiles_but_wrong = {
        "edits": [
            {
                "file": "src/lib.rs",
                "line_start": 9,
                "line_end": 9,
                "replacement": "        2 * (self.width + self.width)",
            }
        ]
    }
    loop, _, _, events = make_loop(
        inference=ScriptedInference([reply(compiles_but_wrong), reply(FIXED_LINE)])
    )
    evs, result = await run_all(loop, workspace=str(ws), verify_profile="test")
    assert result.outcome == patchloop_pb2.OUTCOME_FIXED and result.attempts == 2
    a1, a2 = events.of_type(PA)
    assert not a1.success and a1.reason == "still_failing"
    assert a2.success
    verify_runs = [f for f in kinds(evs, "compile_finished") if f.verify]
    assert [f.success for f in verify_runs] == [False, True]
    assert "self.width + self.width" not in result.diff


async def test_get_run_sees_a_running_run_and_a_gone_caller_cancels_it(crate, make_loop):
    import asyncio

    gate = asyncio.Event()
    called = asyncio.Event()

    async def slow_model(request, timeout_s):
        called.set()
        await gate.wait()
        return reply(FIXED_LINE)

    inference = ScriptedInference([reply(FIXED_LINE)])
    inference.complete = slow_model  # type: ignore[method-assign]
    loop, _, _, events = make_loop(inference=inference)
    ws = crate("field_typo")
    stream = loop.run(patchloop_pb2.RunRequest(workspace=str(ws), run_id="live"))
    async for ev in stream:
        if ev.WhichOneof("kind") == "routing":
            break
    await asyncio.wait_for(called.wait(), 30)  # the run is in its model call
    status = loop.get_run("live")
    assert status.state == patchloop_pb2.RUN_STATE_RUNNING and not status.HasField("result")
    await stream.aclose()  # the caller goes away mid-run
    status = loop.get_run("live")
    assert status.state == patchloop_pb2.RUN_STATE_DONE
    assert (
        status.result.outcome == patchloop_pb2.OUTCOME_GAVE_UP
        and status.result.reason.startswith("cancelled")
    )
    assert [e.payload["outcome"] for e in events.of_type(LR)] == ["gave_up"]


async def test_syntax_breaking_patch_is_reverted_although_the_count_drops(crate, make_loop):
    ws = crate("field_typo")
    src = ws / "src/lib.rs"
    # Three type errors (E0609 each); rustc reports them all.
    src.write_text(
        src.read_text().replace(
            "    }\n}\n\n#[cfg",
            "    }\n    pub fn area(&self) -> u32 { self.width * self.heigth }\n"
            "    pub fn half(&self) -> u32 { self.heigth / 2 }\n}\n\n#[cfg",
            1,
        )
    )
    original = src.read_text()
    # Fixes one field but drops a closing parenthesis: rustc now stops at the
    # parse error and reports 1 error instead of 3.
    breaks_syntax = {
        "edits": [
            {
                "file": "src/lib.rs",
                "search": "(self.width + self.hieght)",
                "replace": "(self.width + self.height",
            }
        ]
    }
    loop, _, inference, events = make_loop(
        inference=ScriptedInference([reply(breaks_syntax), reply(FIXED_LINE)])
    )
    await run_all(loop, workspace=str(ws))
    a1 = events.of_type(PA)[0]
    assert (a1.payload["errors_before"], a1.payload["errors_after"]) == (3, 1)
    assert a1.payload["kept"] is False and a1.payload["new_errors"], a1.payload
    assert "reverted" in a1.payload["detail"]
    # Attempt 2 was prompted from the state before the patch, not from broken code.
    assert "self.hieght)" in inference.requests[1].messages[1].content
    assert (
        inference.requests[1]
        .messages[1]
        .content.startswith(
            inference.requests[0].messages[1].content[: -len("\nReply with the JSON patch.")]
        )
    )
    assert src.read_text() == original, "the user's tree is untouched (apply=False)"


async def test_cloud_call_refused_for_a_missing_key_is_a_refusal_not_an_attempt(crate, make_loop):
    ws = crate("field_typo")
    no_key = ModelCallFailed(
        "failed_precondition",
        "DEEPSEEK_API_KEY is not set; set it to the cloud API key to allow cloud calls "
        "(none was sent)",
        common_pb2.ERROR_REASON_CLOUD_KEY_MISSING,
    )
    loop, _, inference, events = make_loop(
        inference=ScriptedInference([by_mode(NOOP_LINE, no_key)])
    )
    _, result = await run_all(loop, workspace=str(ws), max_attempts=4)
    assert result.outcome == patchloop_pb2.OUTCOME_REFUSED and "DEEPSEEK_API_KEY" in result.reason
    # Two reflex attempts; the cloud call that never left the machine is no attempt.
    assert [e.mode for e in events.of_type(PA)] == [common_pb2.ROUTING_MODE_REFLEX] * 2
    cloud_request = inference.requests[-1]
    assert cloud_request.mode == common_pb2.ROUTING_MODE_CLOUD
    assert cloud_request.fallback_reason == "max_failures_reached"
    assert inference.requests[0].fallback_reason == ""
