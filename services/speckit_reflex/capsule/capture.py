"""Secret redaction and the capture modes (full_io | hash | none).

Redaction runs first, in every mode, over request, response and payload: a
key never reaches the database, not even inside a hash's input (a hash of a
short key could be brute-forced).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

REDACTED = "[REDACTED]"

# Field names whose value is a secret, compared lower-case with '-' as '_'.
_SECRET_KEYS = frozenset({
    "api_key", "apikey", "x_api_key", "authorization", "proxy_authorization",
    "token", "access_token", "refresh_token", "id_token", "auth_token", "bearer_token",
    "password", "passwd", "secret", "client_secret", "secret_key", "private_key",
    "cookie", "set_cookie",
})
_SECRET_SUFFIXES = ("_api_key", "_secret", "_password", "_access_token", "_auth_token", "_secret_key")

# Secrets inside free text: bearer tokens, OpenAI-style keys (sk-..., sk-proj-...),
# and key=value / key: value spellings of the names above.
_SECRET_VALUE = re.compile(
    r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"
    r"|\bsk-[A-Za-z0-9_-]{8,}"
    r"|\b((?:x[-_])?api[-_]?key|authorization|password|secret|token)(\s*[:=]\s*)(?!\[REDACTED\])[^\s,;\"'&]+"
)


def _is_secret_key(key: str) -> bool:
    k = key.lower().replace("-", "_")
    return k in _SECRET_KEYS or k.endswith(_SECRET_SUFFIXES)


def _redact_text(text: str) -> str:
    def repl(m: re.Match[str]) -> str:
        if m.group(1):
            return f"{m.group(1)}{REDACTED}"
        if m.group(2):
            return f"{m.group(2)}{m.group(3)}{REDACTED}"
        return REDACTED

    return _SECRET_VALUE.sub(repl, text)


def redact(value: Any) -> Any:
    """A copy of a JSON-like value with secret fields and secret-looking strings redacted."""
    if isinstance(value, dict):
        return {k: (REDACTED if _is_secret_key(k) and v is not None else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return _redact_text(value) if len(value) >= 8 else value
    return value


def canonical_sha256(value: Any) -> str:
    """sha256 of the canonical JSON form (sorted keys, no whitespace)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def capture(value: Any, mode: str) -> tuple[Any, str]:
    """(stored document, sha256) of an already redacted request or response.

    full_io keeps the document and its hash, hash keeps only the hash, none
    keeps neither.
    """
    if value is None or mode == "none":
        return None, ""
    digest = canonical_sha256(value)
    return (value if mode == "full_io" else None), digest
