"""Load, validate and snapshot the model policy."""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from speckit_reflex.errors import PolicyError
from speckit_reflex.policy.model import Policy

ENV_PREFIX = "SPECKIT_POLICY__"


@dataclass(frozen=True)
class LoadedPolicy:
    policy: Policy
    source: str
    snapshot_json: str
    sha256: str

    @classmethod
    def of(cls, policy: Policy, source: str) -> LoadedPolicy:
        """A validated policy with its snapshot and hash (the policy_hash every
        decision and event carries): sha256 of the canonical snapshot JSON."""
        text = canonical_json(snapshot(policy))
        return cls(policy, source, text, hashlib.sha256(text.encode()).hexdigest())


def load_policy(path: str | Path | None, environ: Mapping[str, str] | None = None) -> LoadedPolicy:
    """Read `path` (None = built-in defaults), apply env overrides, validate.

    Raises PolicyError naming the file and the offending key.
    """
    environ = os.environ if environ is None else environ
    source = str(path) if path else "<defaults>"
    data: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise PolicyError(f"{source}: policy file not found")
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"{source}: not valid TOML: {exc}") from None
    overrides = _apply_env(data, environ)
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(_describe(source, exc, overrides)) from None
    return LoadedPolicy.of(policy, source)


def _apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, str]:
    """SPECKIT_POLICY__ROUTING__REFLEX__ENABLED=true sets routing.reflex.enabled.

    Values are read as TOML values (true, 1500, "text", ["a", "b"]); a value
    that is not valid TOML is taken as a plain string. Returns the variable
    that set each dotted key, so an error can name it rather than the file.
    """
    overrides: dict[str, str] = {}
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX):
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX) :].split("__") if k]
        if not keys:
            continue
        raw = environ[name]
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        node = data
        for k in keys[:-1]:
            child = node.setdefault(k, {})
            if not isinstance(child, dict):
                raise PolicyError(f"{name}: {'.'.join(keys)} does not name a table key")
            node = child
        node[keys[-1]] = value
        overrides[".".join(keys)] = name
    return overrides


def _describe(source: str, exc: ValidationError, overrides: Mapping[str, str]) -> str:
    lines = [f"{source}: invalid policy"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(root)"
        # A key an environment variable set (or a value inside one) is that
        # variable's fault, not the file's: name it.
        var = next((v for k, v in overrides.items() if key == k or key.startswith(f"{k}.")), None)
        origin = f", set by {var}" if var else ""
        if err["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key{origin}")
        else:
            got = err.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"  {key}: {err['msg']}{shown}{origin}")
    return "\n".join(lines)


def snapshot(policy: Policy) -> dict[str, Any]:
    """The effective policy in SPEC-KIT-978's PolicySnapshot shape."""
    reflex = policy.routing.reflex
    return {
        "policy_version": policy.version,
        "governance": {
            "routing": {
                "reflex": {
                    "enabled": reflex.enabled,
                    "endpoint": reflex.endpoint,
                    "model": reflex.model,
                    "timeout_ms": reflex.timeout_ms,
                    "json_schema_required": reflex.json_schema_required,
                    "fallback_to_cloud": reflex.fallback_to_cloud,
                    "require_verdict": reflex.require_verdict,
                    "thresholds": reflex.thresholds.model_dump(mode="json", exclude_none=True),
                    "model_primary": reflex.model_primary or reflex.model,
                    "model_fallbacks": list(reflex.model_fallbacks),
                    "max_failures": reflex.max_failures,
                    "backends": [b.model_dump(mode="json") for b in reflex.effective_backends()],
                },
                "cloud": policy.routing.cloud.model_dump(mode="json"),
                "roles": {
                    k: v.model_dump(mode="json") for k, v in sorted(policy.routing.roles.items())
                },
                "health": policy.routing.health.model_dump(mode="json"),
                "verdicts": policy.routing.verdicts.model_dump(mode="json"),
            },
            "privacy": policy.privacy.model_dump(mode="json"),
            "budget": policy.budget.model_dump(mode="json"),
        },
        "capture": policy.capture.model_dump(mode="json"),
        "inference": policy.inference.model_dump(mode="json"),
        "patchloop": policy.patchloop.model_dump(mode="json"),
    }


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace, UTF-8: the input of the policy hash."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
