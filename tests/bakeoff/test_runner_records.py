"""What the bakeoff runner records for the verdict: calls, replies apart from
errors, pass@1, the model identity, and skipped trials (in-memory peers)."""

from __future__ import annotations

from pathlib import Path

from speckit_reflex.bakeoff import BakeoffRunner, RunOptions, find_suite, load_suite
from speckit_reflex.bakeoff.digest import suite_digest
from speckit_reflex.v1 import capsule_pb2, common_pb2, patchloop_pb2

REFLEX, CLOUD = common_pb2.ROUTING_MODE_REFLEX, common_pb2.ROUTING_MODE_CLOUD
NO_KEY = "DEEPSEEK_API_KEY is not set (set it to the cloud API key to run cloud trials)"


class ScriptedLoop:
    """A timed-out call (no reply), then a valid reply that fixes the crate on attempt 2."""

    async def run(self, workspace: str, **fields):  # type: ignore[no-untyped-def]
        failed = patchloop_pb2.RunEvent(run_id="r", attempt=1)
        failed.model_call.backend, failed.model_call.model, failed.model_call.mode = (
            "local",
            "m",
            REFLEX,
        )
        failed.model_call.error = "deadline_exceeded: no reply in 120 s"
        yield failed
        ok = patchloop_pb2.RunEvent(run_id="r", attempt=2)
        c = ok.model_call
        c.backend, c.model, c.mode, c.schema_valid, c.attempts = "local", "m", REFLEX, True, 1
        c.timing.latency_ms = 850.0
        yield ok
        done = patchloop_pb2.RunEvent(run_id="r")
        done.result.outcome, done.result.attempts = patchloop_pb2.OUTCOME_FIXED, 2  # type: ignore[assignment]
        yield done


class RecordingCapsule:
    def __init__(self) -> None:
        self.trials: list[capsule_pb2.Trial] = []
        self.runs: list[capsule_pb2.BakeoffRun] = []

    async def upsert_bakeoff_run(self, run):  # type: ignore[no-untyped-def]
        self.runs.append(run)
        return run

    async def record_trials(self, trials):  # type: ignore[no-untyped-def]
        self.trials.extend(trials)
        return capsule_pb2.RecordTrialsReply(inserted=len(trials))

    async def bakeoff_stats(self, win=None, bakeoff_run_id=""):  # type: ignore[no-untyped-def]
        stats = capsule_pb2.BakeoffStats()
        stats.reflex.total_attempts = 10**6  # nothing to wait for
        return stats

    async def write_report(self, win=None, out_dir="", bakeoff_run_id=""):  # type: ignore[no-untyped-def]
        return capsule_pb2.WriteReportReply()


async def test_trials_record_replies_apart_from_errors_identity_and_skips(tmp_path: Path):
    suite = load_suite(find_suite("reflex_patchloop_v1"))
    tasks = suite.select(limit=2)
    capsule = RecordingCapsule()
    options = RunOptions(
        modes=("reflex",),
        skipped_modes={"cloud": NO_KEY},
        lint=False,
        scratch_root=tmp_path,
        model_identities={("local", "m"): "llamacpp:/models/m.gguf@b5000"},
    )
    result = await BakeoffRunner(ScriptedLoop(), capsule, options).run(suite, tasks)
    assert capsule.runs[-1].suite_version == suite.version and result.status == "done"
    # The suite's version as the digest of its tasks, on every record of the run.
    assert {r.suite_digest for r in capsule.runs} == {suite_digest(suite)}
    assert len(result.suite_digest) == 64
    skipped = [t for t in capsule.trials if t.mode == CLOUD]
    assert [t.task_id for t in skipped] == [t.id for t in tasks]
    assert all(t.skipped == NO_KEY and t.model_calls == 0 and not t.success for t in skipped)
    reflex = [t for t in capsule.trials if t.mode == REFLEX]
    assert len(reflex) == 2
    for t in reflex:
        assert (t.model_calls, t.replies, t.schema_valid_replies) == (2, 1, 1)
        assert list(t.call_latency_ms) == [850.0] and t.json_valid
        assert t.success and not t.first_attempt_success
        assert t.model_identity == "llamacpp:/models/m.gguf@b5000"
