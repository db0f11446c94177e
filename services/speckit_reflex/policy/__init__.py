"""Layout rule: services/ holds what runs inside a server process, clients/
what runs on the caller's side. This package is shared server code: every
service may import it; it imports no service and nothing caller-side (the
CLI, the bakeoff harness, the demo), only the runtime, policy, errors, the
contract (speckit_reflex.contract, speckit_reflex.v1) and the typed clients
(tests/foundation/test_layout.py checks it).

The model policy (`model_policy.toml`): typed model, loader, snapshot, hash.
"""

from speckit_reflex.policy.loader import LoadedPolicy, canonical_json, load_policy, snapshot
from speckit_reflex.policy.model import Policy

__all__ = ["LoadedPolicy", "Policy", "canonical_json", "load_policy", "snapshot"]
