"""MODEL-POLICY escalation predicates, evaluated as data (GR-004).

Each role's `escalate_when` rules (e.g. `confidence lt 0.75`,
`context_estimate gt 100000`, `tool_heavy true`) are compiled once per policy
into small closures; `first_fired` walks them in policy order, so the same
request always fires the same predicate.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from speckit_reflex.policy.model import EscalationRule
from speckit_reflex.v1 import router_pb2

_COMPARE: dict[str, tuple[Callable[[float, float], bool], str]] = {
    "lt": (operator.lt, "<"),
    "le": (operator.le, "<="),
    "gt": (operator.gt, ">"),
    "ge": (operator.ge, ">="),
    "eq": (operator.eq, "=="),
}

# Request fields that proto3 leaves unset when the caller has no value, with
# their presence test; an unset value never fires a predicate (no confidence
# reported ≠ confidence 0).
_PRESENT: dict[str, Callable[[router_pb2.DecideRequest], bool]] = {
    "confidence": lambda r: r.HasField("confidence"),
}


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """One predicate, ready to test against a DecideRequest."""

    field: str
    text: str
    test: Callable[[float], bool]

    def describe(self, request: router_pb2.DecideRequest) -> str:
        """The predicate and the value that made it fire, e.g. 'confidence < 0.75 (got 0.6)'."""
        return f"{self.text} (got {getattr(request, self.field)!r})"


def compile_rule(rule: EscalationRule) -> CompiledRule:
    """Turn one policy rule into a test over a request."""
    field = rule.field
    if rule.op == "true":
        return CompiledRule(field, f"{field} is true", lambda v: bool(v))
    fn, symbol = _COMPARE[rule.op]
    if rule.value is None:  # the policy model refuses this; never compile it
        raise ValueError(f"escalation rule {field} {rule.op} has no value")
    bound = float(rule.value)
    shown = int(bound) if bound.is_integer() else bound
    return CompiledRule(field, f"{field} {symbol} {shown}", lambda v: fn(v, bound))


class EscalationRules:
    """A role's predicates in policy order."""

    def __init__(self, rules: Sequence[EscalationRule]):
        self._rules = tuple(compile_rule(r) for r in rules)

    def __bool__(self) -> bool:
        return bool(self._rules)

    def first_fired(self, request: router_pb2.DecideRequest) -> CompiledRule | None:
        """The first predicate that holds for `request`, or None."""
        for rule in self._rules:
            present = _PRESENT.get(rule.field)
            if present is not None and not present(request):
                continue
            if rule.test(getattr(request, rule.field)):
                return rule
        return None
