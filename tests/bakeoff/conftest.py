"""Helpers of the bakeoff and admin-CLI tests: run the real `speckit` command
in a subprocess against in-process services, and make PatchAttempt events."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from speckit_reflex.v1 import common_pb2


@dataclass
class CliRun:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def speckit_env(addrs: dict[str, str], **extra: str) -> dict[str, str]:
    """The process environment with SPECKIT_<SVC>_ADDR for each running service."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPECKIT_")}
    env.update({f"SPECKIT_{name.upper()}_ADDR": addr for name, addr in addrs.items()})
    # rich wraps at 80 columns without a terminal; tests read whole lines.
    env["COLUMNS"] = "240"
    env.update(extra)
    return env


def run_speckit(
    args: list[str], env: dict[str, str], timeout: float = 120, cwd: str | None = None
) -> CliRun:
    """`speckit ARGS` as a user runs it; returns exit code and both streams."""
    proc = subprocess.run(
        [sys.executable, "-m", "speckit_reflex.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )
    return CliRun(proc.returncode, proc.stdout, proc.stderr)


def attempt_event(
    mode: int,
    *,
    success: bool,
    latency_ms: float,
    json_valid: bool = True,
    model: str = "",
    bakeoff_run_id: str = "",
) -> common_pb2.Event:
    """One PatchAttempt event as PatchLoop records it."""
    return common_pb2.Event(
        id=str(uuid.uuid4()),
        type=common_pb2.EVENT_TYPE_PATCH_ATTEMPT,
        role=common_pb2.ROLE_IMPLEMENTER,
        stage=common_pb2.STAGE_IMPLEMENT,
        mode=mode,  # type: ignore[arg-type]
        model=model
        or ("smollm2-135m-instruct" if mode == common_pb2.ROUTING_MODE_REFLEX else "deepseek-chat"),
        backend="local" if mode == common_pb2.ROUTING_MODE_REFLEX else "cloud",
        success=success,
        json_valid=json_valid,
        latency_ms=latency_ms,
        attempt=1,
        bakeoff_run_id=bakeoff_run_id,
    )


@pytest.fixture
def migrated_db_url(db_url: str) -> str:
    """`db_url` with the speckit schema in place (Postgres is never migrated
    implicitly: that is an operator's `speckit db upgrade`)."""
    from speckit_reflex.capsule.migrate import upgrade_url

    upgrade_url(db_url)
    return db_url
