"""WriteReport, UpsertBakeoffRun and RecordTrials on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from xml.etree import ElementTree

import grpc
import pytest
from capsule_helpers import CLOUD, REFLEX, attempt

from speckit_reflex.clients.capsule import window
from speckit_reflex.v1 import capsule_pb2


def _trial(
    i: int, mode: int, model: str, success: bool, attempts: int = 1, run: str = "run-1"
) -> capsule_pb2.Trial:
    return capsule_pb2.Trial(
        id=f"{run}-{model}-{i}",
        bakeoff_run_id=run,
        task_id=f"task{i}",
        category="borrow",
        mode=mode,
        model=model,
        success=success,
        attempts=attempts,
        json_valid=True,
        latency_ms=100.0,
        model_calls=attempts,
        replies=attempts,
        schema_valid_replies=attempts,
        call_latency_ms=[100.0] * attempts,
        first_attempt_success=success and attempts == 1,
    )  # type: ignore[arg-type]


async def test_bakeoff_run_upsert_creates_then_updates(capsule):
    run = capsule_pb2.BakeoffRun(
        suite="reflex_patchloop_v1", mode="both", status="running", task_count=60
    )
    run.started_at.FromMicroseconds(1_780_000_000_000_000)
    created = await capsule.upsert_bakeoff_run(run)
    assert len(created.id) == 36 and created.status == "running" and created.task_count == 60
    created.status = "done"
    created.finished_at.FromMicroseconds(1_780_000_100_000_000)
    created.summary.update({"solved": 12})
    updated = await capsule.upsert_bakeoff_run(created)
    assert updated.id == created.id and updated.status == "done"
    assert updated.started_at.ToMicroseconds() == 1_780_000_000_000_000
    assert updated.summary.fields["solved"].number_value == 12
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await capsule.upsert_bakeoff_run(capsule_pb2.BakeoffRun(status="exploded"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_trials_are_idempotent_by_id(capsule):
    trials = [_trial(i, REFLEX, "qwen", i % 2 == 0) for i in range(4)]
    first = await capsule.record_trials(trials)
    assert (first.inserted, first.duplicates) == (4, 0)
    again = await capsule.record_trials([*trials[:2], _trial(9, CLOUD, "deepseek", True)])
    assert (again.inserted, again.duplicates) == (1, 2)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await capsule.record_trials(
            [_trial(1, REFLEX, "q", True), capsule_pb2.Trial(task_id="no id")]
        )
    assert (
        err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "trials[1]" in err.value.details()
    )


async def test_write_report_json_and_markdown(capsule, tmp_path: Path):
    started = capsule_pb2.BakeoffRun(
        id="run-1", suite="reflex_patchloop_v1", mode="both", status="done"
    )
    started.started_at.GetCurrentTime()
    run = await capsule.upsert_bakeoff_run(started)
    events = [
        attempt(REFLEX, "qwen", 80.0 + 40 * i, success=i % 4 != 0, bakeoff_run_id=run.id)
        for i in range(24)
    ]
    events += [
        attempt(CLOUD, "deepseek", 2500.0 + 10 * i, bakeoff_run_id=run.id) for i in range(22)
    ]
    await capsule.append_events(events)
    await capsule.record_trials(
        [_trial(i, REFLEX, "qwen", i % 4 != 0, attempts=1 + i % 2) for i in range(20)]
        + [_trial(i, CLOUD, "deepseek", True) for i in range(20)]
    )
    reply = await capsule.write_report(
        window("24h"), out_dir=str(tmp_path / ".speckit" / "eval"), bakeoff_run_id=run.id
    )

    json_path, md_path = Path(reply.json_path), Path(reply.markdown_path)
    assert re.fullmatch(r"reflex-bakeoff-\d{8}T\d{12}Z\.json", json_path.name)
    assert md_path.name == json_path.name.replace(".json", ".md")
    doc = json.loads(await asyncio.to_thread(json_path.read_text))
    assert doc["stats"]["period"] == "24h"
    assert (
        doc["stats"]["reflex"]["total_attempts"] == 24
        and doc["stats"]["cloud"]["total_attempts"] == 22
    )
    assert doc["stats"]["reflex"]["success_rate"] == 75.0
    # 75 % / 100 % parity on the 20 shared tasks fails the 85 % gate.
    assert doc["verdict"]["status"] == "fail" and reply.verdict.passed is False
    assert doc["verdict"]["failures"] == [
        {
            "kind": "parity_too_low",
            "message": reply.verdict.failures[0].message,
            "observed": 75.0,
            "required": 85.0,
        }
    ]
    parity = next(r for r in doc["verdict"]["results"] if r["name"] == "success_parity_percent")
    assert (parity["observed"], parity["required"], parity["status"]) == (75.0, 85.0, "fail")
    assert (
        doc["verdict"]["bakeoff_run_ids"] == ["run-1"]
        and doc["verdict"]["baseline"]["kind"] == "same_runs"
    )
    assert (
        sum(doc["latency_histogram"]["reflex"]) == 24
        and sum(doc["latency_histogram"]["cloud"]) == 22
    )
    assert doc["latency_histogram"]["cloud"][-3] == 22  # all in 2000-5000 ms
    qwen = next(t for t in doc["trials"] if t["model"] == "qwen")
    assert (qwen["tasks"], qwen["successes"], qwen["first_attempt_successes"]) == (20, 15, 5)
    assert doc["bakeoff_run"]["id"] == "run-1"

    md = await asyncio.to_thread(md_path.read_text)
    assert "**FAIL** — from bakeoff run(s) `run-1`" in md
    assert "| success_parity_percent | 75.0 | >= 85 | fail |" in md
    assert (
        "| reflex / `qwen` | 24 | 75.0 % |" in md and "| cloud / `deepseek` | 22 | 100.0 % |" in md
    )
    assert "## Latency distribution, reflex vs cloud" in md
    assert "| reflex / `qwen` | 20 | 15 | 5 |" in md
    # The header names the run it covers, not a bare window.
    assert md.splitlines()[2].startswith(
        "Covers bakeoff run `run-1` (suite reflex_patchloop_v1, mode both, status done)"
    )
    # The chart: an SVG file beside the report, linked from it, with a legend.
    (svg_link,) = re.findall(r"!\[[^\]]*\]\(([^)]+\.svg)\)", md)
    svg_path = md_path.parent / svg_link
    assert svg_link == md_path.name.replace(".md", "-latency.svg") and svg_path.is_file()
    svg = ElementTree.parse(svg_path).getroot()
    ns = {"s": "http://www.w3.org/2000/svg"}
    legend = svg.find("s:g[@class='legend']", ns)
    assert legend is not None and [t.text for t in legend.findall("s:text", ns)] == [
        "reflex",
        "cloud",
    ]
    bars = [
        r.find("s:title", ns).text
        for r in svg.findall("s:rect", ns)
        if r.find("s:title", ns) is not None
    ]
    assert (
        "cloud 2000-5000 ms: 22" in bars
        and sum(int(b.rsplit(": ", 1)[1]) for b in bars if b.startswith("reflex")) == 24
    )


async def test_report_paths_are_absolute_for_a_relative_out_dir(
    capsule, tmp_path: Path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    # Relative to the server's SPECKIT_HOME (reports never leave it), not to its cwd.
    reply = await capsule.write_report(window("24h"), out_dir="eval")
    for p in (reply.json_path, reply.markdown_path):
        assert (
            Path(p).is_absolute()
            and Path(p).parent == tmp_path / ".speckit" / "eval"
            and await asyncio.to_thread(Path(p).is_file)
        )
    doc = json.loads(await asyncio.to_thread(Path(reply.json_path).read_text))
    few = [f for f in doc["verdict"]["failures"] if f["kind"] == "too_few_samples"]
    assert few and all(
        type(f["observed"]) is int and type(f["required"]) is int for f in few
    )  # counts
    md = await asyncio.to_thread(Path(reply.markdown_path).read_text)
    assert "| p95_latency_ms | – | < 2000 | not_judged |" in md  # no figure, never a pass
    # Both thresholds lack the tasks; the report says so once, not once per threshold.
    assert len(few) > 1 and md.count("- reflex: 0 task(s) judged, at least 20 required") == 1
    assert (
        md.splitlines()[2].startswith("Covers every attempt from ")
        and "(the last 24h)" in md.splitlines()[2]
    )


async def test_report_defaults_to_speckit_eval_under_home(start_capsule, tmp_path: Path):
    _, capsule = await start_capsule()
    reply = await capsule.write_report()
    assert Path(reply.json_path).parent == tmp_path / ".speckit" / "eval"
    md = await asyncio.to_thread(Path(reply.markdown_path).read_text)
    assert md.startswith("# Reflex bakeoff report")
    assert "**NOT JUDGED**" in md  # no evidence, no pass
