"""The one secret redactor: events (Inference before it emits, Capsule before
it stores), the dead-letter file, log lines and reports all go through it.
Its name rule (`is_secret_name`) also keeps secrets out of the build sandbox's
environment (patchloop.sandbox).

Two kinds of rule:
- by name: a JSON field called `api_key`, `authorization`, `password`,
  `github_token`, `*_secret`, ... has its whole value replaced, whatever it
  looks like; the same names are secret in `name=value` text (below);
- by shape, inside any text: bearer and basic credentials, OpenAI and
  Anthropic keys (`sk-...`, `sk-proj-...`, `sk-ant-...`), GitHub tokens
  (`ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_`, `github_pat_`), Slack tokens
  (`xoxb-`, `xoxp-`, ...), AWS access key ids (`AKIA...`, `ASIA...`), Google
  API keys (`AIza...`), GitLab (`glpat-`), Hugging Face (`hf_`) and npm
  (`npm_`) tokens, JSON Web Tokens, PEM private keys, the password of a URL
  (`postgresql://user:password@host`, a git remote), and `name=value` /
  `name: value` pairs whose name says secret (`password=`,
  `AWS_SECRET_ACCESS_KEY=`, `api-key: `, ...), which is how AWS secret keys
  and other shapeless secrets appear in text.
Callers that know their actual keys (the adapter's API keys) pass them too,
so a key of no known shape is still removed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

REDACTED = "[REDACTED]"

# A name that says "secret" (a JSON field, an environment variable, the name
# of a `name=value` pair in text), any case. `token` must end the name so that
# `max_tokens=384` or `prompt_tokens: 12` stay readable.
_SECRET_NAME = (
    r"[A-Za-z0-9_.-]*(?:api[-_]?key|access[-_]?key|password|passwd|secret[A-Za-z0-9_-]*|token"
    r"|credentials?|private[-_]?key|authorization|cookie)(?![A-Za-z0-9_-])"
)
_SECRET_NAME_RE = re.compile(_SECRET_NAME, re.IGNORECASE)

# Each alternative is one credential shape; groups 1, 2 and 3-5 are prefixes kept.
_SHAPES = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)"
    r"|(?i:(bearer\s+))[A-Za-z0-9._~+/=-]{8,}"
    # "Basic" is also an English word: its credential has a digit or + / =.
    r"|(?i:(basic\s+))(?=[A-Za-z]*[0-9+/=])[A-Za-z0-9+/=]{8,}"
    r"|\bsk-[A-Za-z0-9_-]{8,}"
    r"|\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})"
    r"|\bxox[abposr]-[A-Za-z0-9-]{10,}"
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"
    r"|\bAIza[0-9A-Za-z_-]{35}"
    r"|\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
    rf"|(?i:\b({_SECRET_NAME})([\"']?\s*[:=]\s*)([\"']?)(?!\[REDACTED\])(?:(?:bearer|basic)\s+)?)[^\s,;\"'&]+"
    r"|\bglpat-[A-Za-z0-9_-]{20,}"
    r"|\bhf_[A-Za-z0-9]{30,}"
    r"|\bnpm_[A-Za-z0-9]{36}"
    # The password of a URL's user part (scheme://user:password@host): kept up to the user.
    r"|(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)(?!\[REDACTED\])[^\s@/]+(?=@)"
)
# Shorter text cannot hold any of the shapes above.
_MIN_LEN = 8


def _keep_prefix(m: re.Match[str]) -> str:
    prefix = m.group(1) or m.group(2) or m.group(6)
    if prefix:
        return f"{prefix}{REDACTED}"
    if m.group(3):
        return f"{m.group(3)}{m.group(4)}{m.group(5)}{REDACTED}"
    return REDACTED


def is_secret_name(name: str) -> bool:
    """Does a field or variable of this name hold a secret?"""
    return _SECRET_NAME_RE.fullmatch(name) is not None


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with known `secrets` and every credential-shaped substring replaced."""
    for s in secrets:
        if s and s in text:
            text = text.replace(s, REDACTED)
    if len(text) < _MIN_LEN:
        return text
    return _SHAPES.sub(_keep_prefix, text)


def redact(value: Any, secrets: tuple[str, ...] = ()) -> Any:
    """A copy of a JSON-like value with secret fields and secret-looking text redacted."""
    if isinstance(value, dict):
        return {
            k: (REDACTED if v is not None and is_secret_name(str(k)) else redact(v, secrets))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v, secrets) for v in value]
    if isinstance(value, str):
        return redact_text(value, secrets)
    return value


def has_secret(text: str) -> bool:
    """A cheap test before redacting many short fields one by one."""
    return len(text) >= _MIN_LEN and _SHAPES.search(text) is not None
