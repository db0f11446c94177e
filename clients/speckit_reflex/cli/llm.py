"""`speckit llm serve`: the embedded local model server (llama.cpp + SmolLM2)."""

from __future__ import annotations

import argparse
import os

from speckit_reflex.cli.output import CliError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("llm", help="the embedded local model server")
    psub = p.add_subparsers(dest="llm_command", required=True)
    s = psub.add_parser(
        "serve", help="serve SmolLM2-135M-Instruct with llama.cpp (OpenAI-compatible)"
    )
    s.add_argument("--host", default=os.environ.get("SPECKIT_LLM_HOST", "127.0.0.1"))
    s.add_argument("--port", type=int, default=int(os.environ.get("SPECKIT_LLM_PORT", "3009")))
    s.add_argument("--threads", type=int, default=int(os.environ.get("SPECKIT_LLM_THREADS", "2")))
    s.add_argument("--ctx-size", type=int, default=int(os.environ.get("SPECKIT_LLM_CTX", "4096")))
    s.add_argument(
        "--parallel",
        type=int,
        default=int(os.environ.get("SPECKIT_LLM_PARALLEL", "2")),
        help="parallel decoding slots",
    )
    s.add_argument(
        "--model-path",
        default=os.environ.get("SPECKIT_LLM_MODEL_PATH", ""),
        help="a GGUF file (default: the bundled SmolLM2-135M-Instruct Q4_1)",
    )
    s.add_argument("--alias", default="smollm2-135m-instruct", help="model id served in /v1/models")
    s.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from speckit_reflex.inference.embedded import (
        EmbeddedServerConfig,
        ModelNotInstalled,
        serve_forever,
    )
    from speckit_reflex.runtime.listen import check_listen_address
    from speckit_reflex.runtime.logs import configure_logging

    configure_logging(os.environ.get("SPECKIT_LOG_FORMAT", "text"))
    cfg = EmbeddedServerConfig(
        host=args.host,
        port=args.port,
        threads=args.threads,
        ctx_size=args.ctx_size,
        parallel=args.parallel,
        model_path=args.model_path,
        alias=args.alias,
    )
    try:
        check_listen_address(f"{args.host}:{args.port}", "llm serve")
        serve_forever(cfg)
    except ModelNotInstalled as exc:
        raise CliError(str(exc)) from None
    except ImportError as exc:
        raise CliError(
            f"xllamacpp is not installed ({exc}): pip install 'speckit-reflex[llm]'"
        ) from None
    except OSError as exc:
        raise CliError(exc.strerror or str(exc)) from None
    return 0
