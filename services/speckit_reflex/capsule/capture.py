"""The capture modes (full_io | hash | none) of model requests and responses.

Redaction (runtime.redact) runs first, in every mode, over request, response
and payload: a key never reaches the database, not even inside a hash's
input (a hash of a short key could be brute-forced).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


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
