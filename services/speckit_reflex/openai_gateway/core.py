"""What the endpoint does for one request, over the typed gRPC clients: ask
the Router (or pin the requested model), then ask the Inference Adapter with
the decision's model and id, as PatchLoop does. The Router records the
RoutingDecision event and the adapter the LLMCall event, so a call through
this endpoint is audited like any other."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from speckit_reflex.clients.inference import InferenceClient
from speckit_reflex.clients.router import RouterClient
from speckit_reflex.openai_gateway.request import AUTO_MODEL, ChatRequest
from speckit_reflex.v1 import common_pb2, inference_pb2, router_pb2

# Bounds a model call end to end; the adapter applies the policy's per-call
# timeouts within it.
DEFAULT_CALL_TIMEOUT_S = 600.0


def new_completion_id() -> str:
    return f"chatcmpl-{os.urandom(12).hex()}"


@dataclass(frozen=True)
class Call:
    """One routed request: its id (also the events' run id) and the decision."""

    id: str
    request: ChatRequest
    decision: router_pb2.RoutingDecision

    def complete_request(self) -> inference_pb2.CompleteRequest:
        d, r = self.decision, self.request
        return InferenceClient.request(
            r.messages,
            # Reflex: the model only, so the adapter may fail over to another
            # local backend serving it (PatchLoop does the same). Cloud: as decided.
            backend="" if d.mode == common_pb2.ROUTING_MODE_REFLEX else d.backend,
            model=d.model,
            max_tokens=r.max_tokens,
            temperature=r.temperature,
            seed=r.seed,
            json_schema=r.json_schema,
            schema_name=r.schema_name,
            mode=d.mode,
            role=common_pb2.ROLE_IMPLEMENTER,
            session_id=d.session_id,
            run_id=self.id,
            decision_id=d.decision_id,
            attempt=1,
        )


class Gateway:
    def __init__(
        self,
        router: RouterClient,
        inference: InferenceClient,
        *,
        call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
        route_timeout_s: float = 10.0,
    ):
        self._router = router
        self._inference = inference
        self._call_timeout = call_timeout_s
        self._route_timeout = route_timeout_s

    async def models(self) -> list[dict[str, Any]]:
        """`speckit/auto`, then the policy's reflex chain, then its cloud model."""
        snap = await self._router.get_policy(timeout=self._route_timeout)
        routing = json.loads(snap.json)["governance"]["routing"]
        reflex = routing["reflex"]
        out = [_model(AUTO_MODEL, "speckit")]
        for m in [reflex["model_primary"], *reflex["model_fallbacks"]]:
            owners = [b["name"] for b in reflex["backends"] if m in b["models"]]
            out.append(_model(m, ",".join(owners) or "unserved"))
        cloud = routing["cloud"]["model"]
        if cloud not in {m["id"] for m in out}:
            out.append(_model(cloud, "cloud"))
        return out

    async def route(self, req: ChatRequest, *, local_only: bool) -> Call:
        """Ask the Router: Implementer, Implement stage, `speckit/auto` or a pinned model."""
        call_id = new_completion_id()
        decision = await self._router.decide(
            router_pb2.DecideRequest(
                stage=common_pb2.STAGE_IMPLEMENT,
                role=common_pb2.ROLE_IMPLEMENTER,
                session_id=req.session_id or call_id,
                run_id=call_id,
                attempt=1,
                local_only=local_only,
                model="" if req.auto else req.model,
            ),
            timeout=self._route_timeout,
        )
        return Call(call_id, req, decision)

    async def complete(self, call: Call) -> inference_pb2.CompleteReply:
        return await self._inference.send(call.complete_request(), timeout=self._call_timeout)

    def stream(self, call: Call) -> AsyncGenerator[inference_pb2.CompleteChunk, None]:
        return self._inference.send_stream(call.complete_request(), timeout=self._call_timeout)


def _model(model_id: str, owner: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": owner}
