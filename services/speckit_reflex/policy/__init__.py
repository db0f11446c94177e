"""The model policy (`model_policy.toml`): typed model, loader, snapshot, hash."""

from speckit_reflex.policy.loader import LoadedPolicy, canonical_json, load_policy, snapshot
from speckit_reflex.policy.model import Policy

__all__ = ["LoadedPolicy", "Policy", "canonical_json", "load_policy", "snapshot"]
