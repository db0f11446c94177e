"""Log lines, text and JSON, go through the shared redactor."""

from __future__ import annotations

import json
import logging

import pytest

from speckit_reflex.runtime.logs import configure_logging
from tests.foundation.secret_samples import NEEDLES, TEXT


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_log_lines_never_print_a_credential(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging(fmt)
        log = logging.getLogger("speckit.test")
        log.warning(
            "upstream said %s",
            TEXT,
            extra={"fields": {"detail": TEXT, "api_key": "no-shape-at-all"}},
        )
        try:
            raise RuntimeError(TEXT)
        except RuntimeError:
            log.exception("crashed")
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    err = capsys.readouterr().err
    assert [n for n in NEEDLES if n in err] == [] and "no-shape-at-all" not in err
    assert err.count("[REDACTED]") >= len(NEEDLES)
    if fmt == "json":
        lines = [json.loads(x) for x in err.splitlines()]
        assert lines[0]["api_key"] == "[REDACTED]" and "exc" in lines[1]
