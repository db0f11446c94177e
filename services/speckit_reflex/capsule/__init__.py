"""Layout rule: services/ holds what runs inside a server process, clients/
what runs on the caller's side. This package is server code: it imports its
own modules, the shared runtime, policy and errors, the contract
(speckit_reflex.contract, speckit_reflex.v1) and reaches other services only
through their typed clients (speckit_reflex.clients); never another service's
internals, the CLI, the bakeoff harness or the demo
(tests/foundation/test_layout.py checks it).

The Capsule service: the only one that touches the database. Stores events
and bakeoff runs, computes statistics and the threshold verdict, writes
reports.
"""
