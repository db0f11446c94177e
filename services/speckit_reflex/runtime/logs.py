"""Structured logging: key=value text by default, one JSON object per line with
SPECKIT_LOG_FORMAT=json. Extra fields travel in `extra={"fields": {...}}`; a line
logged inside a traced span carries its `trace_id`.

Every line goes through the shared redactor (runtime.redact) on its way out:
a message, a field or a traceback that quotes a credential never prints it."""

from __future__ import annotations

import json
import logging
import sys
import time

from speckit_reflex.runtime.redact import redact, redact_text
from speckit_reflex.runtime.tracing import current_trace_id


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(getattr(record, "fields", {}) or {})
        trace_id = current_trace_id()
        if trace_id:
            out["trace_id"] = trace_id
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        # Redacted as a document, so that the line stays valid JSON.
        return json.dumps(redact(out), default=lambda o: redact_text(str(o)))


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7} {record.name}: {record.getMessage()}"
        fields = getattr(record, "fields", None)
        if fields:
            base += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        trace_id = current_trace_id()
        if trace_id:
            base += f" trace_id={trace_id}"
        if record.exc_info:
            base += "\n" + self.formatException(record.exc_info)
        return redact_text(base)


def configure_logging(fmt: str = "text", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request at INFO; that is noise on the hot path.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # Alembic announces each of its plugins at INFO whenever Capsule starts.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
