"""The bakeoff harness (suite reflex_patchloop_v1 and friends): load a suite,
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
