"""`speckit serve router|inference|patchloop|capsule|openai|all`.

`all` runs the four services in one process, and the OpenAI-compatible
endpoint beside them when SPECKIT_OPENAI_ADDR is set. `--policy` names the
model policy; `--mode reflex` lets the Implementer use the local model before
a bakeoff has passed (flagged and audited on every decision).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from pathlib import Path

from speckit_reflex.cli.output import CliError
from speckit_reflex.contract import OPENAI_DEFAULT_ADDR
from speckit_reflex.errors import DomainError, PolicyError
from speckit_reflex.policy import LoadedPolicy, load_policy
from speckit_reflex.runtime.bootstrap import SERVICE_ORDER, start_services
from speckit_reflex.runtime.listen import AddressInUse
from speckit_reflex.runtime.logs import configure_logging
from speckit_reflex.runtime.server import InsecureListenRefused, serve_until_signal
from speckit_reflex.runtime.settings import RuntimeSettings

log = logging.getLogger("speckit.serve")

# What --mode reflex changes in the policy (as environment overrides would).
REFLEX_MODE_OVERRIDES = {
    "SPECKIT_POLICY__ROUTING__REFLEX__ENABLED": "true",
    "SPECKIT_POLICY__ROUTING__REFLEX__REQUIRE_VERDICT": "false",
}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve", help="run one service or the OpenAI-compatible endpoint, or all in one process"
    )
    p.add_argument(
        "service",
        choices=[*SERVICE_ORDER, "openai", "all"],
        help="`all`: the four services, plus the OpenAI endpoint when SPECKIT_OPENAI_ADDR is set",
    )
    p.add_argument(
        "--policy",
        metavar="PATH",
        help="model_policy.toml to load (overrides SPECKIT_POLICY; default: built-in, reflex off)",
    )
    p.add_argument(
        "--mode",
        choices=["policy", "reflex"],
        default="policy",
        help="reflex: route the Implementer to a healthy local model even before a bakeoff has "
        "passed (routing.reflex.enabled = true, require_verdict = false); every such decision "
        "is flagged verdict_waived and audited. For trying the lane, not for real work",
    )
    p.add_argument("--log-format", choices=["text", "json"], help="overrides SPECKIT_LOG_FORMAT")
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback address without SPECKIT_AUTH_TOKEN or TLS (anyone who can "
        "reach the port can run builds and read the audit trail)",
    )
    p.set_defaults(func=run)


def effective_policy(path: str, mode: str) -> LoadedPolicy:
    environ = dict(os.environ)
    if mode == "reflex":
        environ.update(REFLEX_MODE_OVERRIDES)
    return load_policy(path or None, environ=environ)


def run(args: argparse.Namespace) -> int:
    settings = RuntimeSettings()
    if args.log_format:
        settings = settings.model_copy(update={"log_format": args.log_format})
    if args.policy:
        settings = settings.model_copy(update={"policy": str(Path(args.policy).resolve())})
    configure_logging(settings.log_format, settings.log_level)
    if args.service == "all":
        names = list(SERVICE_ORDER) + (["openai"] if settings.openai_addr else [])
    else:
        names = [args.service]
    try:
        policy = effective_policy(settings.policy, args.mode)
        if args.mode == "reflex":
            log.warning(
                "mode reflex: the bakeoff gate is waived; decisions to an unproven local model are "
                "flagged verdict_waived and audited"
            )
        asyncio.run(_serve(names, settings, policy, args.insecure))
    except (PolicyError, InsecureListenRefused) as exc:
        raise CliError(str(exc), exit_code=2) from None
    except DomainError as exc:
        # e.g. Capsule refusing a database at an older schema revision.
        raise CliError(exc.message) from None
    except AddressInUse as exc:
        raise CliError(exc.strerror or str(exc)) from None
    except OSError as exc:
        raise CliError(str(exc)) from None
    return 0


async def _serve(
    names: list[str], settings: RuntimeSettings, policy: LoadedPolicy, insecure: bool
) -> None:
    from speckit_reflex.openai_gateway.app import (
        OpenAIServer,
        build_server,
        check_openai_exposure,
    )

    settings.home.mkdir(parents=True, exist_ok=True)
    openai_addr = settings.openai_addr or OPENAI_DEFAULT_ADDR
    if "openai" in names:
        check_openai_exposure(openai_addr, settings.auth_token, insecure)
    grpc_names = [n for n in names if n != "openai"]
    ctx, servers = await start_services(grpc_names, settings, policy, insecure=insecure)
    gateway: OpenAIServer | None = None
    try:
        if "openai" in names:
            gateway = build_server(
                ctx.channel("router"), ctx.channel("inference"), openai_addr, settings.auth_token
            )
            await gateway.start(settings.grace_s)
        await serve_until_signal(
            servers, settings.grace_s, before_stop=gateway.close if gateway else None
        )
    finally:
        if gateway is not None:
            await gateway.close()
        for s in servers:
            await s.stop(0)
        await ctx.close()
