"""`speckit serve router|inference|patchloop|capsule|all`."""

from __future__ import annotations

import argparse
import asyncio

from speckit_reflex.cli.output import CliError
from speckit_reflex.errors import DomainError, PolicyError
from speckit_reflex.runtime.bootstrap import SERVICE_ORDER, start_services
from speckit_reflex.runtime.listen import AddressInUse
from speckit_reflex.runtime.logs import configure_logging
from speckit_reflex.runtime.server import InsecureListenRefused, serve_until_signal
from speckit_reflex.runtime.settings import RuntimeSettings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run one service, or all four in one process")
    p.add_argument("service", choices=[*SERVICE_ORDER, "all"])
    p.add_argument("--log-format", choices=["text", "json"], help="overrides SPECKIT_LOG_FORMAT")
    p.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback address without SPECKIT_AUTH_TOKEN or TLS (anyone who can "
                        "reach the port can run builds and read the audit trail)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = RuntimeSettings()
    if args.log_format:
        settings = settings.model_copy(update={"log_format": args.log_format})
    configure_logging(settings.log_format, settings.log_level)
    names = list(SERVICE_ORDER) if args.service == "all" else [args.service]
    try:
        asyncio.run(_serve(names, settings, args.insecure))
    except (PolicyError, InsecureListenRefused) as exc:
        raise CliError(str(exc), exit_code=2) from None
    except DomainError as exc:
        # e.g. Capsule refusing a database at an older schema revision.
        raise CliError(exc.message) from None
    except AddressInUse as exc:
        raise CliError(exc.strerror) from None
    except OSError as exc:
        raise CliError(str(exc)) from None
    return 0


async def _serve(names: list[str], settings: RuntimeSettings, insecure: bool) -> None:
    settings.home.mkdir(parents=True, exist_ok=True)
    ctx, servers = await start_services(names, settings, insecure=insecure)
    try:
        await serve_until_signal(servers, settings.grace_s)
    finally:
        await ctx.close()
