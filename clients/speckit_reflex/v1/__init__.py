"""Layout rule: services/ holds what runs inside a server process, clients/
what runs on the caller's side. The v1 contract is imported by both: these
modules are generated from protos/ by scripts/gen_protos.py (do not edit them;
this __init__ is hand-written), and their hand-written companion is
speckit_reflex.contract (default addresses, enum short names, JSON forms).

Generated gRPC code for the speckit_reflex.v1 contracts (see protos/).
"""
