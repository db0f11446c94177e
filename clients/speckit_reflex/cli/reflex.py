"""`speckit reflex bakeoff|check|trials|harvest|replay|health|status|cache|models|run`: operate the
reflex lane (SPEC-KIT-978's headless CLI and its planned status commands).

Tables by default, `--json` on stdout for machines, errors on stderr with a
non-zero exit. Every command reaches the services only through `clients/`.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Awaitable, Callable
from typing import Any

from speckit_reflex.capsule.windows import parse_duration_us
from speckit_reflex.cli import (
    reflex_harvest,
    reflex_replay,
    reflex_run,
    reflex_trials,
    reflex_views,
)
from speckit_reflex.cli.output import print_json
from speckit_reflex.cli.reflex_links import ServiceLinks, reporting, run_with_links
from speckit_reflex.clients.capsule import window
from speckit_reflex.contract import stats_to_seed_json, verdict_to_json
from speckit_reflex.errors import InvalidArgument

WINDOW_HELP = "window back from now: 1h, 24h, 7d, 30d (default 24h)"


def _window_arg(text: str) -> str:
    """`--since` checked before any service is called: `<n>` then s, m, h or d,
    as Capsule reads it (at most 100 years)."""
    if re.fullmatch(r"[1-9][0-9]*[smhd]", text):
        try:
            parse_duration_us(text)
        except InvalidArgument as exc:
            raise argparse.ArgumentTypeError(exc.message) from None
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not a window like 1h, 24h, 7d or 30d")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "reflex", help="bakeoff statistics, the CI gate, trials, backend health, one-off fixes"
    )
    rsub = p.add_subparsers(dest="reflex_command", required=True, metavar="COMMAND")

    q = rsub.add_parser("bakeoff", help="statistics reflex vs cloud over a window")
    q.add_argument("--since", default="24h", type=_window_arg, help=WINDOW_HELP)
    _json(q, run_bakeoff)

    q = rsub.add_parser(
        "check", help="does reflex hold the promotion thresholds on the bakeoff's evidence?"
    )
    q.add_argument(
        "--since",
        default="24h",
        type=_window_arg,
        help="bakeoff runs started in this window are judged: 1h, 24h, 7d, 30d (default 24h)",
    )
    q.add_argument("--run", default="", help="judge this one bakeoff run instead")
    q.add_argument(
        "--suite", default="", help="suite whose runs are judged (default: the policy's)"
    )
    q.add_argument(
        "--suite-digest",
        default="",
        help="judge runs of this suite version (digest of its tasks) only "
        "(default: the newest judged run's)",
    )
    q.add_argument(
        "--min-samples", type=int, default=0, help="minimum tasks judged per threshold (0 = policy)"
    )
    q.add_argument(
        "--model",
        default="",
        help="judge one reflex model only, against the weights its server reports now",
    )
    q.add_argument(
        "--exit-code",
        action="store_true",
        help="exit 1 unless every threshold passes (fail or not judged: the CI gate)",
    )
    _json(q, run_check)

    reflex_trials.register(rsub)
    reflex_harvest.register(rsub, _window_arg)
    reflex_replay.register(rsub, _window_arg)

    q = rsub.add_parser(
        "health", help="health of every model backend (reachable, model listed, generates)"
    )
    q.add_argument("--backend", default="", help="one backend by policy name")
    q.add_argument("--refresh", action="store_true", help="probe now instead of the cached answer")
    _json(q, run_health)

    q = rsub.add_parser("status", help="effective reflex configuration, thresholds and policy hash")
    _json(q, run_status)

    q = rsub.add_parser("cache", help="PatchLoop's persistent build cache")
    csub = q.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    _json(
        csub.add_parser("clear", help="remove every cache entry no run is using"), run_cache_clear
    )

    q = rsub.add_parser("models", help="models served by the configured backends")
    q.add_argument("--backend", default="", help="one backend by policy name")
    _json(q, run_models)

    reflex_run.register(rsub)


def _json(p: argparse.ArgumentParser, func: Callable[[argparse.Namespace], int]) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.set_defaults(func=func)


def _report(
    args: argparse.Namespace,
    service: str,
    fetch: Callable[[ServiceLinks], Awaitable[Any]],
    as_json: Callable[[Any], dict[str, Any]],
    show: Callable[[Any], None],
) -> int:
    """One read-only command: fetch from a service, then JSON or a table."""

    async def body(links: ServiceLinks) -> int:
        with reporting(service, links):
            reply = await fetch(links)
        if args.json:
            print_json(as_json(reply))
        else:
            show(reply)
        return 0

    return run_with_links(body)


def run_bakeoff(args: argparse.Namespace) -> int:
    return _report(
        args,
        "capsule",
        lambda links: links.capsule.bakeoff_stats(window(args.since)),
        stats_to_seed_json,
        lambda stats: reflex_views.show_stats(stats_to_seed_json(stats)),
    )


async def current_identity(links: ServiceLinks, model: str) -> str:
    """What the reflex server reports about `model`'s weights now ("" if nothing)."""
    with reporting("inference", links):
        reply = await links.inference.health()
    return next((b.identity.key for b in reply.backends if b.model == model and b.identity.key), "")


def run_check(args: argparse.Namespace) -> int:
    async def body(links: ServiceLinks) -> int:
        identity = await current_identity(links, args.model) if args.model else ""
        with reporting("capsule", links):
            reply = await links.capsule.check_thresholds(
                window(args.since),
                min_samples=max(0, args.min_samples),
                model=args.model,
                bakeoff_run_id=args.run,
                suite=args.suite,
                model_identity=identity,
                suite_digest=args.suite_digest,
            )
        doc = verdict_to_json(reply, args.since)
        if args.json:
            print_json(doc)
        else:
            reflex_views.show_verdict(doc)
        # Only a pass passes: a threshold that could not be judged fails the gate.
        return 1 if args.exit_code and not reply.passed else 0

    return run_with_links(body)


def run_health(args: argparse.Namespace) -> int:
    return _report(
        args,
        "inference",
        lambda links: links.inference.health(args.backend, refresh=args.refresh),
        reflex_views.health_json,
        reflex_views.show_health,
    )


def run_status(args: argparse.Namespace) -> int:
    async def body(links: ServiceLinks) -> int:
        with reporting("router"):
            snap = await links.router.get_policy(timeout=10)
        with reporting("patchloop"):
            cache = await links.patchloop.get_build_cache()
            builds = await links.patchloop.build_settings()
        doc = reflex_views.status_json(snap, cache, builds)
        if args.json:
            print_json(doc)
        else:
            reflex_views.show_status(doc)
        return 0

    return run_with_links(body)


def run_cache_clear(args: argparse.Namespace) -> int:
    return _report(
        args,
        "patchloop",
        lambda links: links.patchloop.clear_build_cache(),
        reflex_views.cache_clear_json,
        reflex_views.show_cache_clear,
    )


def run_models(args: argparse.Namespace) -> int:
    return _report(
        args,
        "inference",
        lambda links: links.inference.list_models(args.backend),
        reflex_views.models_json,
        reflex_views.show_models,
    )
