"""A run request checked against the policy: `RunSpec`, what one run is to do.

Every RunRequest field is hostile until `RunSpec.from_request` has checked it
(InvalidArgument naming the field); unset fields take the policy's
`patchloop` defaults. A request names build profiles of the policy, never a
command.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from speckit_reflex.errors import InvalidArgument
from speckit_reflex.policy import LoadedPolicy
from speckit_reflex.policy.model import PROFILE_NAME, PatchLoopSettings
from speckit_reflex.runtime import validate
from speckit_reflex.v1 import common_pb2, patchloop_pb2


@dataclass(frozen=True)
class BuildStep:
    """A policy build profile: its name and the command it stands for."""

    profile: str
    command: tuple[str, ...]


_PROFILE_NAME = re.compile(PROFILE_NAME)
# Limits of RunRequest fields beyond what holds for every field of their kind
# (runtime.validate: no NUL, known enum values, bounded text).
_RUN_RULES: dict[str, validate.Rule] = {
    "workspace": validate.Text(4096, required=True),
    "max_attempts": validate.Range(0, 50),
    "session_id": validate.Text(128),
    "run_id": validate.Text(128),
    "bakeoff_run_id": validate.Text(128),
    "task_id": validate.Text(128),
    "build_profile": validate.Text(32),
    "verify_profile": validate.Text(32),
}
_FORCE_MODES = (
    common_pb2.ROUTING_MODE_UNSPECIFIED,
    common_pb2.ROUTING_MODE_REFLEX,
    common_pb2.ROUTING_MODE_CLOUD,
)


def policy_profile(field: str, name: str, profiles: dict[str, tuple[str, ...]]) -> BuildStep:
    """The policy's profile called `name`; a request can name one, never supply a command."""
    if not _PROFILE_NAME.match(name):
        raise InvalidArgument(
            f"{field}: {name!r} is not a profile name (a name such as 'check', never a command)",
            field=field,
        )
    if name not in profiles:
        raise InvalidArgument(
            f"{field}: no profile {name!r} in the policy (profiles: {', '.join(sorted(profiles))})",
            field=field,
        )
    return BuildStep(name, tuple(profiles[name]))


def build_timeout_s(requested: float, pl: PatchLoopSettings) -> float:
    """A request's build time limit (0: the policy's), never above the policy's maximum."""
    if requested > pl.max_build_timeout_s:
        raise InvalidArgument(
            f"build_timeout_s: {requested} is above the policy's "
            f"patchloop.max_build_timeout_s ({pl.max_build_timeout_s})",
            field="build_timeout_s",
        )
    return float(requested or pl.build_timeout_s)


@dataclass(frozen=True)
class RunSpec:
    """A checked run request with policy defaults filled in."""

    workspace: str
    apply: bool
    max_attempts: int
    build: BuildStep
    verify: BuildStep | None
    compiler_fast_path: bool
    build_timeout_s: float
    force_mode: common_pb2.RoutingMode.ValueType
    session_id: str
    run_id: str
    bakeoff_run_id: str
    task_id: str
    local_only: bool
    max_tokens: int
    allow_create_files: bool

    @classmethod
    def from_request(cls, req: patchloop_pb2.RunRequest, policy: LoadedPolicy) -> RunSpec:
        """Check every field (InvalidArgument naming it) and fill unset ones from `policy.patchloop`."""
        pl = policy.policy.patchloop
        validate.check_message(req, _RUN_RULES)
        timeout_s = build_timeout_s(req.build_timeout_s, pl)
        if req.force_mode not in _FORCE_MODES:
            raise InvalidArgument(
                f"force_mode: {common_pb2.RoutingMode.Name(req.force_mode)} is not a mode "
                "of the Implementer (UNSPECIFIED, REFLEX or CLOUD)",
                field="force_mode",
            )
        build = policy_profile("build_profile", req.build_profile or pl.build_profile, pl.profiles)
        verify_name = req.verify_profile if req.HasField("verify_profile") else pl.verify_profile
        verify = policy_profile("verify_profile", verify_name, pl.profiles) if verify_name else None
        run_id = req.run_id or str(uuid.uuid4())
        return cls(
            workspace=req.workspace,
            apply=req.apply,
            max_attempts=req.max_attempts or pl.max_attempts,
            build=build,
            verify=verify,
            compiler_fast_path=req.compiler_fast_path
            if req.HasField("compiler_fast_path")
            else pl.compiler_fast_path,
            build_timeout_s=timeout_s,
            force_mode=req.force_mode,
            session_id=req.session_id or run_id,
            run_id=run_id,
            bakeoff_run_id=req.bakeoff_run_id,
            task_id=req.task_id,
            local_only=req.local_only,
            max_tokens=pl.max_tokens,
            allow_create_files=pl.allow_create_files,
        )
