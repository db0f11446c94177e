"""Layout rule: services/ holds what runs inside a server process, clients/
what runs on the caller's side. The typed clients are the one piece of
clients/ that servers import too: services talk to each other only through
these, never through another service's internals. So they import only the
contract (speckit_reflex.contract, speckit_reflex.v1) and each other
(tests/foundation/test_layout.py checks it).

Typed async clients of the speckit-reflex services, the channel that carries
address, TLS and bearer token, and the port picking of child processes a
caller starts (`ports`).
"""
