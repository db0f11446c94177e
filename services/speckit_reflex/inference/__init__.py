"""Layout rule: services/ holds what runs inside a server process, clients/
what runs on the caller's side. This package is server code: it imports its
own modules, the shared runtime, policy and errors, the contract
(speckit_reflex.contract, speckit_reflex.v1) and reaches other services only
through their typed clients (speckit_reflex.clients); never another service's
internals, the CLI, the bakeoff harness or the demo
(tests/foundation/test_layout.py checks it).

The Inference service (the Inference Adapter): the only one that speaks
HTTP to model servers; schema-checked completions with failover, backend
health and LLMCall events. core.py picks backends and fails over between
them; turn.py is one backend's turn (generations judged under the schema and
retried); audit.py records each call (LLMCall event, span, metrics).
"""
