"""Layout rule: services/ holds what runs inside a server process, clients/
what runs on the caller's side. This package is caller-side code: it may
import anything, servers included (`speckit serve` starts them), but no server
imports it (tests/foundation/test_layout.py checks it).

The `speckit` command line.
"""
