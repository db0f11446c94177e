"""What a model server says about the weights behind a model name.

A bakeoff verdict holds for the weights it measured, not for a name: an
updated model served under the same name must be bakeoff'ed again
(SPEC-KIT-978's risk table). Each runtime reports its weights its own way:

- llama.cpp: `GET /props` gives `model_path` and `build_info`; the model card
  of `/v1/models` carries `meta` (parameter count, file size), a fingerprint
  of the file;
- SGLang: `GET /get_model_info` gives `model_path` (a path or a hub repo id);
- vLLM: the model card's `root` is the path or repo id the weights came from;
  `GET /version` gives the server version.

None of them reports a content hash today; a `digest` field, where a server
sends one, is taken as is. Reading the identity never decides health: a
server that reports nothing has an empty identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from speckit_reflex.inference.backends import UpstreamFailure


class RootReader(Protocol):
    async def get_root_json(self, path: str, timeout_s: float) -> Any: ...


@dataclass(frozen=True)
class ModelIdentity:
    """The server's word on the weights; `key` is what verdicts compare."""

    kind: str = ""
    weights: str = ""
    build: str = ""
    digest: str = ""
    source: str = ""

    @property
    def key(self) -> str:
        if not self.weights and not self.digest:
            return ""
        key = f"{self.kind}:{self.weights}"
        if self.build:
            key += f"@{self.build}"
        if self.digest:
            key += f"#{self.digest}"
        return key


def _text(doc: Any, *names: str) -> str:
    for name in names:
        value = doc.get(name) if isinstance(doc, dict) else None
        if value not in (None, ""):
            return str(value)
    return ""


async def _get(server: RootReader, path: str, timeout_s: float) -> Any:
    try:
        return await server.get_root_json(path, timeout_s)
    except UpstreamFailure:
        return {}


async def read_identity(
    server: RootReader, kind: str, card: dict[str, Any], timeout_s: float
) -> ModelIdentity:
    """The identity of the model of `card` (its /v1/models entry) on `server`."""
    digest = _text(card, "digest", "sha256")
    if kind == "llamacpp":
        props = await _get(server, "/props", timeout_s)
        meta = card.get("meta")
        if not isinstance(meta, dict):
            meta = {}
        if not digest and meta.get("size") and meta.get("n_params"):
            digest = f"size={meta['size']},n_params={meta['n_params']}"
        return ModelIdentity(
            kind, _text(props, "model_path"), _text(props, "build_info"), digest, "/props"
        )
    if kind == "sglang":
        info = await _get(server, "/get_model_info", timeout_s)
        return ModelIdentity(
            kind, _text(info, "model_path"), "", digest or _text(info, "digest"), "/get_model_info"
        )
    if kind == "vllm":
        version = await _get(server, "/version", timeout_s)
        return ModelIdentity(
            kind, _text(card, "root"), _text(version, "version"), digest, "/v1/models root"
        )
    # A cloud API names its model and nothing more.
    return ModelIdentity(kind, "", "", digest, "")
