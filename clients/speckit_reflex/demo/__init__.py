"""Layout rule: services/ holds what runs inside a server process, clients/
what runs on the caller's side. This package is caller-side code: it may
import anything, servers included (`speckit serve` starts them), but no server
imports it (tests/foundation/test_layout.py checks it).

What `speckit demo` ships with, as resources of this package (in the wheel,
read with importlib.resources): `broken-crate/`, the crate the demo fixes, and
`demo_policy.toml`, the policy it starts the services with (its model server
address, 127.0.0.1:3009, is replaced by the port in use).

Caller-side data only: the CLI and the tests read it, no server does.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable

DEMO_CRATE: Traversable = files("speckit_reflex.demo").joinpath("broken-crate")
DEMO_POLICY: Traversable = files("speckit_reflex.demo").joinpath("demo_policy.toml")

__all__ = ["DEMO_CRATE", "DEMO_POLICY"]
