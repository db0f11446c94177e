"""The routing decision, as a pure function of request, policy and caches.

Implements, in this order (SPEC-KIT-978 and MODEL-POLICY):

Implementer: stage ≠ IMPLEMENT → cloud (stage_not_implement); reflex disabled
→ cloud (reflex_disabled); consecutive failures ≥ max_failures → cloud
(max_failures_reached, a fallback); an Implementer escalation predicate, if
the policy has any → cloud (escalation_predicate, a fallback); then the chain
`model_primary`, `model_fallbacks[]`: a model is routable only while a backend
serving it is healthy (fresh health) *and* its own bakeoff verdict passes; the
first routable one wins (healthy_and_thresholds_met); none → cloud with the
primary's reason (server_unhealthy, thresholds_not_met, or status_unknown for
stale or unreachable sources: never reflex on unknown).

Other roles: local default unless a MODEL-POLICY escalation predicate fires;
a role without a local model goes to cloud (cloud_default).

A request may pin a model (`model`): a chain model is routed to on a healthy
backend with its verdict reported but not required (the caller chose it); the
cloud model goes through the cloud guards below; anything else is invalid.
With `routing.reflex.require_verdict = false` (`serve --mode reflex`) the
chain's first healthy model is routed to even when its verdict does not pass,
flagged `verdict_waived` and audited.

Every cloud route then passes the guards: local_only (GR-009), then
`fallback_to_cloud = false` for reflex fallbacks, then budget caps (GR-011).
A failed guard turns the route into a refusal (`Route.refusal`), which the
Router records and answers with FAILED_PRECONDITION.

No I/O and no randomness here: the same request, policy and cache contents at
the same clock reading give the same Route (GR-004).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeAlias

from speckit_reflex.contract import enum_names
from speckit_reflex.errors import InvalidArgument
from speckit_reflex.policy import LoadedPolicy
from speckit_reflex.router.caches import RouterCaches, health_key
from speckit_reflex.router.escalation import EscalationRules
from speckit_reflex.v1 import common_pb2, router_pb2

REFLEX = common_pb2.ROUTING_MODE_REFLEX
CLOUD = common_pb2.ROUTING_MODE_CLOUD
LOCAL = common_pb2.ROUTING_MODE_LOCAL
IMPLEMENTER = common_pb2.ROLE_IMPLEMENTER
IMPLEMENT = common_pb2.STAGE_IMPLEMENT

R = common_pb2  # RoutingReason values live at module level of common_pb2
Reason: TypeAlias = common_pb2.RoutingReason.ValueType

REASON_NAMES = enum_names(common_pb2.RoutingReason)
ROLE_KEYS = enum_names(common_pb2.Role, unspecified=False)
_VALID_STAGES = frozenset(v for v in common_pb2.Stage.values() if v)
MAX_MODEL_CHARS = 256
_VALID_FORCE = frozenset({common_pb2.ROUTING_MODE_UNSPECIFIED, REFLEX, CLOUD})


def reason_name(reason: int) -> str:
    """'healthy_and_thresholds_met' for ROUTING_REASON_HEALTHY_AND_THRESHOLDS_MET."""
    return REASON_NAMES.get(reason, str(reason))


@dataclass(frozen=True, slots=True)
class Skip:
    """Why one model of the chain was not chosen."""

    model: str
    backend: str
    reason: Reason
    detail: str


@dataclass(frozen=True, slots=True)
class Route:
    """The engine's answer. With `refusal` set, the other fields describe the
    route the policy forbids, and `refusal` is the reason it is refused."""

    role: common_pb2.Role.ValueType
    stage: common_pb2.Stage.ValueType
    mode: common_pb2.RoutingMode.ValueType
    reason: Reason
    detail: str
    model: str = ""
    backend: str = ""
    endpoint: str = ""
    is_fallback: bool = False
    skipped: tuple[Skip, ...] = ()
    forced: bool = False
    refusal: Reason = common_pb2.ROUTING_REASON_UNSPECIFIED
    refusal_detail: str = ""
    verdict_waived: bool = False

    @property
    def refused(self) -> bool:
        return self.refusal != 0

    @property
    def degraded(self) -> bool:
        """A fallback, a refusal or an unproven model: worth an audit line (GR-005)."""
        return self.is_fallback or self.refusal != 0 or self.verdict_waived


@dataclass(frozen=True, slots=True)
class _Target:
    name: str
    endpoint: str
    # Health cache key of this backend serving the chain model it is listed under.
    health_key: str = ""


@dataclass(frozen=True, slots=True)
class _ChainLink:
    model: str
    backends: tuple[_Target, ...]


@dataclass(frozen=True, slots=True)
class _RoleRoute:
    key: str
    local_model: str
    local: _Target
    cloud_model: str
    rules: EscalationRules


class RoutingEngine:
    """Decides routes from one policy snapshot and the live caches.

    Everything derivable from the policy is computed once here, so a decision
    costs a few dictionary lookups.
    """

    def __init__(
        self, loaded: LoadedPolicy, caches: RouterCaches, clock: Callable[[], float] = time.time
    ):
        policy = loaded.policy
        reflex = policy.routing.reflex
        self._caches = caches
        self._clock = clock
        self._enabled = reflex.enabled
        self._max_failures = reflex.max_failures
        self._fallback_to_cloud = reflex.fallback_to_cloud
        self._require_verdict = reflex.require_verdict
        backends = reflex.effective_backends()
        self._chain = tuple(
            _ChainLink(
                m,
                tuple(
                    _Target(b.name, b.endpoint, health_key(b.name, m))
                    for b in backends
                    if m in b.models
                ),
            )
            for m in reflex.chain
        )
        self._links = {link.model: link for link in self._chain}
        self._health_ttl = policy.routing.health.stale_after_s
        self._verdict_ttl = policy.routing.verdicts.stale_after_s
        self._local_only = policy.privacy.local_only
        self._budget = policy.budget
        self._cloud = _Target("cloud", policy.routing.cloud.endpoint)
        self._cloud_model = policy.routing.cloud.model

        def local_target(model: str) -> _Target:
            for b in backends:
                if model in b.models:
                    return _Target(b.name, b.endpoint)
            return _Target("", "")

        self._roles: dict[int, _RoleRoute] = {}
        for role, key in ROLE_KEYS.items():
            rr = policy.routing.roles.get(key)
            if rr is None:
                continue
            self._roles[role] = _RoleRoute(
                key,
                rr.local_model or "",
                local_target(rr.local_model) if rr.local_model else _Target("", ""),
                rr.cloud_model or self._cloud_model,
                EscalationRules(rr.escalate_when),
            )
        impl = self._roles.get(IMPLEMENTER)
        self._implementer_rules = impl.rules if impl else EscalationRules(())

    # -- entry point ---------------------------------------------------------

    def decide(self, req: router_pb2.DecideRequest) -> Route:
        """The route for one attempt. Raises InvalidArgument for a malformed request."""
        if req.role not in ROLE_KEYS:
            raise InvalidArgument(
                f"role: {req.role} is not a known Role (ROLE_UNSPECIFIED is not allowed)",
                field="role",
            )
        if req.stage not in _VALID_STAGES:
            raise InvalidArgument(
                f"stage: {req.stage} is not a known Stage (STAGE_UNSPECIFIED is not allowed)",
                field="stage",
            )
        if len(req.model) > MAX_MODEL_CHARS:
            raise InvalidArgument(f"model: longer than {MAX_MODEL_CHARS} characters", field="model")
        if req.force_mode not in _VALID_FORCE:
            raise InvalidArgument(
                "force_mode: only ROUTING_MODE_REFLEX, ROUTING_MODE_CLOUD or unspecified",
                field="force_mode",
            )
        now = self._clock()
        if req.model:
            return self._pinned(req, now)
        if req.role == IMPLEMENTER:
            return self._implementer(req, now)
        return self._other_role(req, now)

    # -- Implementer ---------------------------------------------------------

    def _implementer(self, req: router_pb2.DecideRequest, now: float) -> Route:
        if req.force_mode == CLOUD:
            return self._to_cloud(
                req,
                now,
                R.ROUTING_REASON_CLOUD_DEFAULT,
                "force_mode=CLOUD: the request chose the cloud implementer (bakeoff trial)",
                forced=True,
            )
        if req.force_mode == REFLEX:
            return self._forced_reflex(req, now)
        if req.stage != IMPLEMENT:
            stage = common_pb2.Stage.Name(req.stage)
            return self._to_cloud(
                req,
                now,
                R.ROUTING_REASON_STAGE_NOT_IMPLEMENT,
                f"stage {stage} is not STAGE_IMPLEMENT: reflex applies only to the Implement stage",
            )
        if not self._enabled:
            return self._to_cloud(
                req, now, R.ROUTING_REASON_REFLEX_DISABLED, "routing.reflex.enabled = false"
            )
        if req.consecutive_failures >= self._max_failures:
            return self._to_cloud(
                req,
                now,
                R.ROUTING_REASON_MAX_FAILURES_REACHED,
                f"{req.consecutive_failures} consecutive failed attempts >= routing.reflex.max_failures = "
                f"{self._max_failures}",
                is_fallback=True,
                reflex_fallback=True,
            )
        fired = self._implementer_rules.first_fired(req)
        if fired is not None:
            return self._to_cloud(
                req,
                now,
                R.ROUTING_REASON_ESCALATION_PREDICATE,
                f"escalation predicate of role implementer fired: {fired.describe(req)}",
                is_fallback=True,
                reflex_fallback=True,
            )
        skipped: list[Skip] = []
        for index, link in enumerate(self._chain):
            target, reason, detail = self._serving_backend(link, now)
            if target is not None:
                reason, detail = self._verdict(link.model, now, target)
                if reason == R.ROUTING_REASON_HEALTHY_AND_THRESHOLDS_MET:
                    return Route(
                        req.role,
                        req.stage,
                        REFLEX,
                        reason,
                        f"{link.model} on {target.name}: backend healthy, bakeoff thresholds met",
                        link.model,
                        target.name,
                        target.endpoint,
                        is_fallback=index > 0,
                        skipped=tuple(skipped),
                    )
                if not self._require_verdict:
                    return Route(
                        req.role,
                        req.stage,
                        REFLEX,
                        reason,
                        f"{link.model} on {target.name}: backend healthy; bakeoff verdict WAIVED by "
                        f"routing.reflex.require_verdict = false (serve --mode reflex): {reason_name(reason)}: "
                        f"{detail or 'no detail'}",
                        link.model,
                        target.name,
                        target.endpoint,
                        is_fallback=index > 0,
                        skipped=tuple(skipped),
                        verdict_waived=True,
                    )
            skipped.append(Skip(link.model, target.name if target else "", reason, detail))
        primary = skipped[0]
        return self._to_cloud(
            req,
            now,
            primary.reason,
            f"no reflex model is routable; primary {primary.model}: {primary.detail}",
            is_fallback=True,
            skipped=tuple(skipped),
            reflex_fallback=True,
        )

    def _forced_reflex(self, req: router_pb2.DecideRequest, now: float) -> Route:
        # A bakeoff must be able to measure a model that has not passed yet,
        # so the verdict is reported but not required; health still is.
        if req.stage != IMPLEMENT:
            raise InvalidArgument(
                "force_mode=REFLEX needs stage STAGE_IMPLEMENT: reflex applies only to the Implement stage",
                field="force_mode",
            )
        skipped: list[Skip] = []
        for index, link in enumerate(self._chain):
            target, reason, detail = self._serving_backend(link, now)
            if target is None:
                skipped.append(Skip(link.model, "", reason, detail))
                continue
            verdict, verdict_detail = self._verdict(link.model, now, target)
            return Route(
                req.role,
                req.stage,
                REFLEX,
                verdict,
                f"force_mode=REFLEX (bakeoff trial): {link.model} on {target.name} healthy; bakeoff verdict "
                f"not required ({reason_name(verdict)}: {verdict_detail or 'passed'})",
                link.model,
                target.name,
                target.endpoint,
                is_fallback=index > 0,
                skipped=tuple(skipped),
                forced=True,
            )
        primary = skipped[0]
        detail = f"force_mode=REFLEX and no reflex model has a healthy backend; primary {primary.model}: {primary.detail}"
        return Route(
            req.role,
            req.stage,
            REFLEX,
            primary.reason,
            detail,
            is_fallback=True,
            skipped=tuple(skipped),
            forced=True,
            refusal=primary.reason,
            refusal_detail=detail,
        )

    def _pinned(self, req: router_pb2.DecideRequest, now: float) -> Route:
        """The route to the model the request names (an OpenAI client's `model`)."""
        if req.role != IMPLEMENTER:
            raise InvalidArgument(
                "model: pinning a model applies only to ROLE_IMPLEMENTER", field="model"
            )
        if req.force_mode != common_pb2.ROUTING_MODE_UNSPECIFIED:
            raise InvalidArgument(
                "model: a pinned model and force_mode are exclusive", field="model"
            )
        link = self._links.get(req.model)
        if link is not None:
            if req.stage != IMPLEMENT:
                raise InvalidArgument(
                    f"model: {req.model} is a reflex model; reflex applies only to STAGE_IMPLEMENT",
                    field="model",
                )
            target, reason, detail = self._serving_backend(link, now)
            if target is None:
                detail = f"pinned model {link.model} has no healthy backend: {detail}"
                return Route(
                    req.role,
                    req.stage,
                    REFLEX,
                    reason,
                    detail,
                    link.model,
                    forced=True,
                    refusal=reason,
                    refusal_detail=detail,
                )
            verdict, verdict_detail = self._verdict(link.model, now, target)
            return Route(
                req.role,
                req.stage,
                REFLEX,
                verdict,
                f"model {link.model} pinned by the request, on {target.name} (healthy); bakeoff verdict not "
                f"required ({reason_name(verdict)}: {verdict_detail or 'passed'})",
                link.model,
                target.name,
                target.endpoint,
                forced=True,
            )
        if req.model == self._cloud_model:
            return self._to_cloud(
                req,
                now,
                R.ROUTING_REASON_CLOUD_DEFAULT,
                f"model {req.model} pinned by the request",
                forced=True,
            )
        known = ", ".join([*self._links, self._cloud_model])
        raise InvalidArgument(
            f"model: {req.model!r} is not a model of the policy (known: {known})",
            field="model",
            reason=common_pb2.ERROR_REASON_UNKNOWN_MODEL,
            metadata={"model": req.model},
        )

    def _serving_backend(self, link: _ChainLink, now: float) -> tuple[_Target | None, Reason, str]:
        """The first backend serving `link.model` with fresh healthy status."""
        if not link.backends:
            return (
                None,
                R.ROUTING_REASON_SERVER_UNHEALTHY,
                "no backend in routing.reflex.backends serves it",
            )
        unknown: list[str] = []
        down: list[str] = []
        caches = self._caches
        for target in link.backends:
            status = caches.health_by_key(target.health_key, target.name)
            if status is None:
                unknown.append(f"{target.name}: no health reported")
            elif now - status.checked_at > self._health_ttl:
                unknown.append(f"{target.name}: health older than {self._health_ttl:g} s")
            elif status.healthy:
                return target, R.ROUTING_REASON_HEALTHY_AND_THRESHOLDS_MET, ""
            else:
                down.append(f"{target.name}: unhealthy ({status.reason or 'no reason given'})")
        if unknown:
            if caches.health_error:
                unknown.append(f"last health refresh failed: {caches.health_error}")
            return None, R.ROUTING_REASON_STATUS_UNKNOWN, "; ".join(down + unknown)
        return None, R.ROUTING_REASON_SERVER_UNHEALTHY, "; ".join(down)

    def _verdict(self, model: str, now: float, target: _Target) -> tuple[Reason, str]:
        """The model's own bakeoff verdict on the weights `target` serves: met, not met, or unknown."""
        caches = self._caches
        status = caches.health_by_key(target.health_key, target.name)
        serving = status.identity if status is not None else ""
        verdict = caches.verdict_of(model, serving)
        error = caches.verdict_errors.get(model, "")
        suffix = f" (last verdict refresh failed: {error})" if error else ""
        if verdict is None:
            other = caches.other_verdict(model, serving)
            if other is not None:
                # New weights under the same name (SPEC-KIT-978: model updates
                # -> re-run the bakeoff): no verdict was formed on them.
                return R.ROUTING_REASON_THRESHOLDS_NOT_MET, (
                    f"model identity changed: the verdict was formed on {other.identity or 'unreported weights'}, "
                    f"{target.name} now serves {serving or 'unreported weights'}; re-run the bakeoff{suffix}"
                )
            return R.ROUTING_REASON_STATUS_UNKNOWN, f"no bakeoff verdict yet{suffix}"
        if now - verdict.fetched_at > self._verdict_ttl:
            return (
                R.ROUTING_REASON_STATUS_UNKNOWN,
                f"bakeoff verdict older than {self._verdict_ttl:g} s{suffix}",
            )
        if not verdict.passed:
            return (
                R.ROUTING_REASON_THRESHOLDS_NOT_MET,
                verdict.detail or "bakeoff thresholds not met",
            )
        return R.ROUTING_REASON_HEALTHY_AND_THRESHOLDS_MET, verdict.detail

    # -- other roles ---------------------------------------------------------

    def _other_role(self, req: router_pb2.DecideRequest, now: float) -> Route:
        if req.force_mode == REFLEX:
            raise InvalidArgument(
                "force_mode=REFLEX applies only to ROLE_IMPLEMENTER: reflex is a mode of the Implementer",
                field="force_mode",
            )
        route = self._roles.get(req.role)
        key = ROLE_KEYS[req.role]
        cloud_model = route.cloud_model if route else self._cloud_model
        if req.force_mode == CLOUD:
            return self._to_cloud(
                req,
                now,
                R.ROUTING_REASON_CLOUD_DEFAULT,
                f"force_mode=CLOUD: the request chose the cloud model of {key}",
                model=cloud_model,
                forced=True,
            )
        if route is None or not route.local_model:
            return self._to_cloud(
                req,
                now,
                R.ROUTING_REASON_CLOUD_DEFAULT,
                f"role {key} has no local model in routing.roles",
                model=cloud_model,
            )
        fired = route.rules.first_fired(req)
        if fired is not None:
            return self._to_cloud(
                req,
                now,
                R.ROUTING_REASON_ESCALATION_PREDICATE,
                f"escalation predicate of role {key} fired: {fired.describe(req)}",
                model=cloud_model,
            )
        return Route(
            req.role,
            req.stage,
            LOCAL,
            R.ROUTING_REASON_LOCAL_DEFAULT,
            f"no escalation predicate of role {key} fired",
            route.local_model,
            route.local.name,
            route.local.endpoint,
        )

    # -- cloud guards ----------------------------------------------------------

    def _to_cloud(
        self,
        req: router_pb2.DecideRequest,
        now: float,
        reason: Reason,
        detail: str,
        *,
        model: str = "",
        is_fallback: bool = False,
        skipped: tuple[Skip, ...] = (),
        forced: bool = False,
        reflex_fallback: bool = False,
    ) -> Route:
        route = Route(
            req.role,
            req.stage,
            CLOUD,
            reason,
            detail,
            model or self._cloud_model,
            self._cloud.name,
            self._cloud.endpoint,
            is_fallback=is_fallback,
            skipped=skipped,
            forced=forced,
        )
        if self._local_only or req.local_only:
            who = "policy privacy.local_only" if self._local_only else "request local_only"
            return replace(
                route,
                refusal=R.ROUTING_REASON_LOCAL_ONLY_FORBIDS_CLOUD,
                refusal_detail=f"{who} = true forbids the cloud route ({reason_name(reason)}: {detail})",
            )
        if reflex_fallback and not self._fallback_to_cloud:
            return replace(
                route,
                refusal=reason,
                refusal_detail=f"{detail}; routing.reflex.fallback_to_cloud = false forbids the cloud fallback",
            )
        over = self._budget_exceeded(now)
        if over:
            return replace(route, refusal=R.ROUTING_REASON_BUDGET_EXHAUSTED, refusal_detail=over)
        return route

    def _budget_exceeded(self, now: float) -> str:
        """Why the cloud budget forbids another call, or "" when it allows it."""
        budget = self._budget
        if not (budget.cloud_max_calls or budget.cloud_max_tokens):
            return ""
        usage = self._caches.usage
        window = budget.window
        if usage is None or now - usage.fetched_at > self._verdict_ttl:
            why = self._caches.usage_error or ("never fetched" if usage is None else "stale")
            # Fail closed: a cap that cannot be checked is not enforced by hoping.
            return f"cloud usage in the last {window} is unknown ({why}), so the budget caps cannot be checked"
        if budget.cloud_max_calls and usage.calls >= budget.cloud_max_calls:
            return f"{usage.calls} cloud calls in the last {window} >= budget.cloud_max_calls = {budget.cloud_max_calls}"
        if budget.cloud_max_tokens and usage.tokens >= budget.cloud_max_tokens:
            return (
                f"{usage.tokens} cloud tokens in the last {window} >= budget.cloud_max_tokens = "
                f"{budget.cloud_max_tokens}"
            )
        return ""
