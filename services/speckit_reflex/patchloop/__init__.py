"""Layout rule: services/ holds what runs inside a server process, clients/
what runs on the caller's side. This package is server code: it imports its
own modules, the shared runtime, policy and errors, the contract
(speckit_reflex.contract, speckit_reflex.v1) and reaches other services only
through their typed clients (speckit_reflex.clients); never another service's
internals, the CLI, the bakeoff harness or the demo
(tests/foundation/test_layout.py checks it).

The PatchLoop service: compile, read diagnostics, ask the Router, call the
Inference Adapter for a patch, apply, rebuild, on a scratch copy of a
workspace. core.py is the service (admits a request, opens the scratch copy,
streams the run); spec.py the checked request; registry.py the run records
and session failure counts; run.py one run; attempt.py one model-backed
attempt; steps.py what a run and its attempts share (events, builds, disk
work on threads).
"""
