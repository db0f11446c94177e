"""The model policy: `model_policy.toml` as typed, validated settings.

`[routing.reflex]` carries every key of SPEC-KIT-978 with its defaults, plus
the ordered model chain (`model_primary`, `model_fallbacks`) of the first
version of the spec and `max_failures` from MODEL-POLICY. Unknown keys are
errors (extra="forbid"), so a typo never silently falls back to a default.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

BackendKind = Literal["sglang", "vllm", "llamacpp", "openai"]
CaptureMode = Literal["full_io", "hash", "none"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Thresholds(_Strict):
    """Bakeoff gates for reflex promotion (SPEC-KIT-978)."""

    p95_latency_ms: float = Field(default=2000, gt=0)
    success_parity_percent: float = Field(default=85, ge=0, le=100)
    json_schema_compliance_percent: float = Field(default=100, ge=0, le=100)
    # Success rate (% of tasks) reflex must reach when there are no cloud
    # results of the same tasks, in the judged runs or in an earlier run of
    # the same suite version (local-only and keyless users). Unset = parity
    # is not judged without a cloud baseline.
    absolute_success_percent: float | None = Field(default=None, ge=0, le=100)


class Backend(_Strict):
    """One local OpenAI-compatible model server."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    kind: BackendKind = "sglang"
    endpoint: str = Field(pattern=r"^https?://")
    # Models this server serves; empty = the reflex chain's models.
    models: list[str] = Field(default_factory=list)
    api_key_env: str | None = None


class Reflex(_Strict):
    enabled: bool = False
    endpoint: str = Field(default="http://127.0.0.1:3009/v1", pattern=r"^https?://")
    model: str = Field(default="qwen2.5-coder-7b-instruct", min_length=1)
    timeout_ms: int = Field(default=1500, gt=0)
    json_schema_required: bool = True
    fallback_to_cloud: bool = True
    # false: a healthy chain model is routed to before its bakeoff passes
    # (`speckit serve --mode reflex`); each such decision is flagged and audited.
    require_verdict: bool = True
    thresholds: Thresholds = Thresholds()
    # Ordered chain: model_primary (default: `model`), then model_fallbacks.
    model_primary: str | None = None
    model_fallbacks: list[str] = Field(default_factory=list)
    # Consecutive failed compile/test loops before escalating to cloud.
    max_failures: int = Field(default=2, ge=1)
    # Runtime of the implicit backend at `endpoint` when `backends` is empty.
    runtime: BackendKind = "sglang"
    # Ordered local servers: primary runtime first, fallback runtimes after.
    backends: list[Backend] = Field(default_factory=list)

    @property
    def chain(self) -> list[str]:
        """The ordered model chain, primary first, without repeats."""
        out: list[str] = []
        for m in [self.model_primary or self.model, *self.model_fallbacks]:
            if m not in out:
                out.append(m)
        return out

    def effective_backends(self) -> list[Backend]:
        """Declared backends, or one implicit backend at `endpoint`."""
        if self.backends:
            return [
                b if b.models else b.model_copy(update={"models": self.chain})
                for b in self.backends
            ]
        return [
            Backend(name="reflex", kind=self.runtime, endpoint=self.endpoint, models=self.chain)
        ]

    @model_validator(mode="after")
    def _unique_backend_names(self) -> Reflex:
        names = [b.name for b in self.backends]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate backend name(s): {', '.join(dupes)}")
        if "cloud" in names:
            raise ValueError("backend name 'cloud' is reserved for [routing.cloud]")
        return self


class Cloud(_Strict):
    """The cloud implementer, reached through an OpenAI-compatible API."""

    kind: BackendKind = "openai"
    endpoint: str = Field(default="https://api.deepseek.com/v1", pattern=r"^https?://")
    model: str = Field(default="deepseek-chat", min_length=1)
    # Name of the environment variable holding the API key (never the key).
    api_key_env: str = Field(default="DEEPSEEK_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    timeout_ms: int = Field(default=60000, gt=0)


Predicate = Literal[
    "confidence",
    "context_estimate",
    "contradictions_detected",
    "tool_heavy",
    "full_sweep",
    "user_requested_escalation",
    "high_risk",
    "consecutive_failures",
]


class EscalationRule(_Strict):
    """One MODEL-POLICY escalation predicate, e.g. confidence < 0.75."""

    field: Predicate
    op: Literal["lt", "le", "gt", "ge", "eq", "true"]
    value: float | None = None

    @model_validator(mode="after")
    def _value_needed(self) -> EscalationRule:
        if self.op != "true" and self.value is None:
            raise ValueError(f"op {self.op!r} needs a value")
        return self


class RoleRoute(_Strict):
    """Routing of a non-Implementer role: local default, cloud on escalation."""

    local_model: str | None = None
    cloud_model: str | None = None
    escalate_when: list[EscalationRule] = Field(default_factory=list)


def _default_roles() -> dict[str, RoleRoute]:
    # MODEL-POLICY section 1 and 3, as data.
    r = EscalationRule
    return {
        "architect": RoleRoute(
            local_model="qwen-14b-thinking",
            cloud_model="gpt-5.1-high",
            escalate_when=[
                r(field="confidence", op="lt", value=0.75),
                r(field="user_requested_escalation", op="true"),
            ],
        ),
        "librarian": RoleRoute(
            local_model="llama-3.1-8b",
            cloud_model="kimi-k2-instruct-0905",
            escalate_when=[
                r(field="context_estimate", op="gt", value=100_000),
                r(field="contradictions_detected", op="true"),
                r(field="tool_heavy", op="true"),
                r(field="full_sweep", op="true"),
                r(field="confidence", op="lt", value=0.75),
            ],
        ),
        "tutor": RoleRoute(local_model="qwen2.5-coder-7b", cloud_model="claude-haiku"),
        "judge": RoleRoute(local_model=None, cloud_model="gpt-5.1-high"),
        "stage0_tier2": RoleRoute(local_model=None, cloud_model="notebooklm"),
        "ace_reflector": RoleRoute(local_model="llama-3.1-8b", cloud_model="kimi-k2-instruct-0905"),
    }


class HealthSettings(_Strict):
    probe_interval_s: float = Field(default=5.0, gt=0)
    # Health older than this is unknown; the Router degrades to cloud.
    stale_after_s: float = Field(default=30.0, gt=0)
    # A failed backend is not tried again for this long.
    cooldown_s: float = Field(default=10.0, ge=0)
    probe_timeout_ms: int = Field(default=5000, gt=0)

    @model_validator(mode="after")
    def _fresh_between_probes(self) -> HealthSettings:
        # Health is refreshed once per interval: if it goes stale sooner, every
        # decision in the gap sees unknown health and goes to cloud.
        if self.stale_after_s <= self.probe_interval_s:
            raise ValueError(
                f"stale_after_s ({self.stale_after_s:g}) must exceed probe_interval_s"
                f" ({self.probe_interval_s:g}): health would go stale between probes"
                " and the Router would send attempts to cloud"
            )
        return self


class VerdictSettings(_Strict):
    """How the Router obtains bakeoff verdicts from Capsule."""

    window: str = Field(default="24h", pattern=r"^\d+[smhd]$")
    # Tasks judged per mode (paired tasks for parity) before a threshold is judged.
    min_samples: int = Field(default=20, ge=1)
    # The bakeoff suite whose runs in the window form the verdict.
    suite: str = Field(default="reflex_patchloop_v1", min_length=1)
    refresh_s: float = Field(default=30.0, gt=0)
    stale_after_s: float = Field(default=300.0, gt=0)

    @model_validator(mode="after")
    def _fresh_between_refreshes(self) -> VerdictSettings:
        # A verdict is fetched once per refresh: if it goes stale sooner, the
        # Router sees no verdict in the gap and never routes to reflex.
        if self.stale_after_s <= self.refresh_s:
            raise ValueError(
                f"stale_after_s ({self.stale_after_s:g}) must exceed refresh_s"
                f" ({self.refresh_s:g}): the verdict would go stale between refreshes"
                " and the Router would not route to reflex"
            )
        return self


class Routing(_Strict):
    reflex: Reflex = Reflex()
    cloud: Cloud = Cloud()
    roles: dict[str, RoleRoute] = Field(default_factory=_default_roles)
    health: HealthSettings = HealthSettings()
    verdicts: VerdictSettings = VerdictSettings()


class Privacy(_Strict):
    # GR-009: true forbids ALL cloud calls.
    local_only: bool = False


class Budget(_Strict):
    """GR-011 budget caps on cloud use over a rolling window (0 = no cap)."""

    window: str = Field(default="24h", pattern=r"^\d+[smhd]$")
    cloud_max_calls: int = Field(default=0, ge=0)
    cloud_max_tokens: int = Field(default=0, ge=0)


class Capture(_Strict):
    mode: CaptureMode = "hash"
    # full_io only: the workspace a PatchLoop run starts from is captured
    # (for `speckit reflex harvest`) when its text files total at most this.
    max_workspace_bytes: int = Field(default=2_000_000, ge=0, le=12_000_000)


class Inference(_Strict):
    # Validation retries after a reply that fails the JSON schema.
    max_validation_retries: int = Field(default=1, ge=0, le=10)
    # Events buffered for Capsule before the oldest are dropped (and counted).
    event_buffer: int = Field(default=10_000, ge=1)


# Build profiles every policy has; `[patchloop.profiles]` adds to them or
# replaces one by name. JSON output so diagnostics can be parsed.
DEFAULT_PROFILES: dict[str, tuple[str, ...]] = {
    "check": ("cargo", "check", "--offline", "--message-format=json"),
    "test": ("cargo", "test", "--offline", "-q"),
    "clippy": ("cargo", "clippy", "--offline", "--message-format=json"),
}
PROFILE_NAME = r"^[a-z][a-z0-9_-]{0,31}$"
_PROFILE_NAME_RE = re.compile(PROFILE_NAME)


class PatchLoopSettings(_Strict):
    max_attempts: int = Field(default=4, ge=1, le=50)
    # The most a request may ask for, and the default wall-clock limit of a build step.
    max_build_timeout_s: int = Field(default=600, gt=0, le=86_400)
    build_timeout_s: int = Field(default=120, gt=0)
    # Named build commands: the only commands PatchLoop ever runs. A request
    # picks a profile by name; it never supplies an argv.
    profiles: dict[str, tuple[str, ...]] = Field(default_factory=lambda: dict(DEFAULT_PROFILES))
    build_profile: str = "check"
    # Run after a clean build to confirm a fix ("" = none).
    verify_profile: str = ""
    compiler_fast_path: bool = True
    max_tokens: int = Field(default=384, gt=0)
    allow_create_files: bool = False

    @field_validator("profiles", mode="before")
    @classmethod
    def _with_defaults(cls, value: object) -> object:
        return {**DEFAULT_PROFILES, **value} if isinstance(value, dict) else value

    @field_validator("profiles")
    @classmethod
    def _valid_profiles(cls, profiles: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        for name, argv in profiles.items():
            if not _PROFILE_NAME_RE.match(name):
                raise ValueError(f"profile name {name!r} must match {PROFILE_NAME}")
            if not argv or any(not a or "\x00" in a for a in argv):
                raise ValueError(
                    f"profile {name!r}: the command must be a non-empty list of non-empty strings"
                )
        return profiles

    @field_validator("build_timeout_s")
    @classmethod
    def _under_the_cap(cls, value: int, info: ValidationInfo) -> int:
        cap = info.data.get("max_build_timeout_s")
        if cap is not None and value > cap:
            raise ValueError(f"{value} is above max_build_timeout_s {cap}")
        return value

    @field_validator("build_profile", "verify_profile")
    @classmethod
    def _names_a_profile(cls, value: str, info: ValidationInfo) -> str:
        profiles = info.data.get("profiles")
        if profiles is not None and value and value not in profiles:
            raise ValueError(f"{value!r} is not a profile ({', '.join(sorted(profiles))})")
        if info.field_name == "build_profile" and not value:
            raise ValueError("a build profile is required")
        return value


class Policy(_Strict):
    """The whole effective policy."""

    version: str = "1.0.0"
    routing: Routing = Routing()
    privacy: Privacy = Privacy()
    budget: Budget = Budget()
    capture: Capture = Capture()
    inference: Inference = Inference()
    patchloop: PatchLoopSettings = PatchLoopSettings()
