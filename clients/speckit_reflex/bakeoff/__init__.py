"""Layout rule: services/ holds what runs inside a server process, clients/
what runs on the caller's side. This package is caller-side code: it may
import anything, servers included (`speckit serve` starts them), but no server
imports it (tests/foundation/test_layout.py checks it).

The bakeoff harness (suite reflex_patchloop_v1 and friends): load a suite,
run its tasks through PatchLoop per mode, record the run and its trials in
Capsule, compute per-backend figures, have Capsule write the report."""

from speckit_reflex.bakeoff.metrics import (
    BackendFigures,
    CacheCheck,
    figures_by_backend,
)
from speckit_reflex.bakeoff.runner import BakeoffResult, BakeoffRunner, RunOptions
from speckit_reflex.bakeoff.suite import (
    Suite,
    SuiteError,
    SuiteTask,
    copy_tree,
    find_suite,
    load_suite,
)
from speckit_reflex.bakeoff.trial import ModelCallRecord, TrialResult

__all__ = [
    "BackendFigures",
    "BakeoffResult",
    "BakeoffRunner",
    "CacheCheck",
    "ModelCallRecord",
    "RunOptions",
    "Suite",
    "SuiteError",
    "SuiteTask",
    "TrialResult",
    "copy_tree",
    "figures_by_backend",
    "find_suite",
    "load_suite",
]
