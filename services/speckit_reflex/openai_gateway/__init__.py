"""The OpenAI-compatible HTTP endpoint (`speckit serve openai`): aider, codex
CLI, continue or a plain `openai` client get the reflex lane without speaking
gRPC. It is a client of the Router and the Inference Adapter over gRPC, like
PatchLoop; it never speaks HTTP to a model server."""
