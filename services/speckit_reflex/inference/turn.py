"""One backend's turn at a call: generate, judge under the schema, retry.

A turn streams a generation from one model server; under a JSON schema the
reply is judged locally (inference/validation.py) and, when rejected,
generated again with a hint appended after the original messages (so the
server's prefix cache still hits), up to the call's validation retries. Each
generation has the backend's own time limit, bounded by the caller's
deadline. A failing backend raises UpstreamFailure out of the turn: whether
to fail over is the call's decision (inference/core.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from speckit_reflex.inference.backends import Generation, ModelServer
from speckit_reflex.inference.calls import CallRequest
from speckit_reflex.inference.validation import ReplyCheck, judge_reply


def retry_hint(check: ReplyCheck) -> dict[str, str]:
    """The message appended after the original prompt for a retry."""
    return {
        "role": "user",
        "content": f"Your previous reply was rejected ({check.kind}). Reply with exactly one JSON "
        "document that matches the schema, with no other text.",
    }


class BackendTurn:
    """Generations of `model` on `server` until the reply passes the schema
    (or there is none) or the retries run out."""

    def __init__(
        self,
        server: ModelServer,
        model: str,
        req: CallRequest,
        *,
        schema: dict[str, Any] | None,
        validator: Any | None,
        retries: int,
        timeout_s: float,
        generations: list[Generation],
    ):
        self.server = server
        self.model = model
        self._req = req
        self._schema = schema
        self._validator = validator
        self._retries = retries
        self._timeout_s = timeout_s
        #: the call's generations, this turn's appended as each starts
        self._generations = generations
        #: the judgement of the last reply (None without a schema)
        self.check: ReplyCheck | None = None

    @property
    def last(self) -> Generation:
        return self._generations[-1]

    async def deltas(self, deadline: float | None) -> AsyncGenerator[str, None]:
        """Content deltas of every generation as they arrive (UpstreamFailure
        when the backend fails). `deadline` is event-loop time."""
        loop = asyncio.get_running_loop()
        req = self._req
        messages = list(req.messages)
        for _ in range(self._retries + 1):
            now = loop.time()
            limit = now + self._timeout_s
            gen = Generation()
            self._generations.append(gen)
            body = self.server.dialect.chat_body(
                self.model,
                messages,
                req.max_tokens,
                req.temperature,
                req.seed,
                self._schema,
                req.schema_name,
            )
            stream = self.server.stream_chat(
                body, limit if deadline is None else min(deadline, limit), gen
            )
            async with aclosing(stream):
                async for delta in stream:
                    yield delta
            if self._validator is None:
                return
            self.check = judge_reply(
                gen.content, gen.reasoning_text, gen.finish_reason, self._validator
            )
            if self.check.valid:
                return
            messages = [*req.messages, retry_hint(self.check)]
