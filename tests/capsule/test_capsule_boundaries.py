"""Capsule's boundaries through the real service: reports stay under
SPECKIT_HOME, and every common credential format is redacted from every
stored column, the report files and the log lines."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
import pytest
from capsule_helpers import make_event

from speckit_reflex.clients.capsule import window
from speckit_reflex.runtime.redact import redact_text
from speckit_reflex.v1 import capsule_pb2, common_pb2
from tests.foundation.secret_samples import NEEDLES, SECRETS, TEXT


def test_the_redactor_removes_each_format_and_keeps_ordinary_text() -> None:
    out = redact_text(TEXT)
    assert [n for n in NEEDLES if n in out] == []
    assert out.count("[REDACTED]") >= len(NEEDLES)
    plain = "max_tokens=384 prompt_tokens: 12, a basic understanding of the task-list; secret_sauce stays"
    assert redact_text(plain) == plain


async def test_every_stored_column_and_the_report_are_redacted(
    start_capsule, caplog, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    svc, capsule = await start_capsule({"capture.mode": "full_io"})
    ev = make_event(
        common_pb2.EVENT_TYPE_PATCH_ATTEMPT,
        session_id="redact-1",
        reason=TEXT[:4000],
        model=SECRETS["openai"],
        backend=SECRETS["github_classic"],
        run_id=SECRETS["aws_access_key_id"],
        task_id=SECRETS["slack"],
        bakeoff_run_id="run-1",
        policy_hash=SECRETS["google"],
        mode=common_pb2.ROUTING_MODE_REFLEX,
        latency_ms=5.0,
        success=True,
        payload={"note": TEXT, "api_key": "plain-value-no-shape"},
        request={"messages": [{"role": "user", "content": TEXT}]},
        response={"content": TEXT},
    )
    await capsule.append_events([ev])
    await capsule.upsert_bakeoff_run(
        capsule_pb2.BakeoffRun(
            id="run-1", suite=TEXT[:200], mode="reflex", status="done", summary={"note": TEXT}
        )
    )
    await capsule.record_trials(
        [
            capsule_pb2.Trial(
                id="t-1",
                bakeoff_run_id="run-1",
                task_id="t",
                reason=TEXT,
                mode=common_pb2.ROUTING_MODE_REFLEX,
                model="m",
            )
        ]
    )
    [stored] = await capsule.all_events(session_id="redact-1")
    report = await capsule.write_report(win=window("1h"), bakeoff_run_id="run-1")
    haystacks = {
        "event": stored.SerializeToString().decode("latin-1"),
        "report.json": await asyncio.to_thread(Path(report.json_path).read_text),
        "report.md": await asyncio.to_thread(Path(report.markdown_path).read_text),
        "logs": caplog.text,
    }
    assert "plain-value-no-shape" not in haystacks["event"], (
        "a secret-named field is redacted whatever its value"
    )
    leaks = {name: [n for n in NEEDLES if n in text] for name, text in haystacks.items()}
    assert leaks == {name: [] for name in haystacks}
    await svc.stop()
    db = tmp_path / "speckit.db"
    if db.exists():  # SQLite: the file itself
        raw = db.read_bytes().decode("latin-1")
        assert [n for n in NEEDLES if n in raw] == []


async def test_report_output_stays_under_speckit_home(start_capsule, tmp_path: Path) -> None:
    _, capsule = await start_capsule()
    home = tmp_path / ".speckit"
    outside = tmp_path / "outside"
    outside.mkdir()
    (home / "escape").parent.mkdir(parents=True, exist_ok=True)
    (home / "escape").symlink_to(outside)
    for out_dir in (
        str(outside),
        "../outside",
        str(home / ".." / "outside"),
        "escape",
        str(home / "escape" / "x"),
        "/etc",
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await capsule.write_report(win=window("1h"), out_dir=out_dir)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, out_dir
        assert err.value.details().startswith("out_dir: ")
    assert list(outside.iterdir()) == []
    inside = await capsule.write_report(win=window("1h"), out_dir="reports/nightly")
    assert Path(inside.json_path).parent == (home / "reports" / "nightly").resolve()
    default = await capsule.write_report(win=window("1h"))
    assert Path(default.json_path).parent == home / "eval"
    absolute = await capsule.write_report(win=window("1h"), out_dir=str(home / "abs"))
    assert Path(absolute.json_path).parent == (home / "abs").resolve()
