"""`speckit policy show|check`: the effective policy, its snapshot and hash."""

from __future__ import annotations

import argparse
import json

from speckit_reflex.cli.output import CliError, print_json, stdout
from speckit_reflex.errors import PolicyError
from speckit_reflex.policy import load_policy
from speckit_reflex.runtime.settings import RuntimeSettings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("policy", help="validate and show the model policy")
    psub = p.add_subparsers(dest="policy_command", required=True)
    for name, helptext in (
        ("show", "print the effective snapshot and hash"),
        ("check", "validate only"),
    ):
        q = psub.add_parser(name, help=helptext)
        q.add_argument(
            "--file",
            "--policy",
            dest="file",
            help="policy file (default: SPECKIT_POLICY, else built-in defaults); "
            "--policy as for speckit serve",
        )
        q.add_argument("--json", action="store_true", help="machine-readable output")
        q.set_defaults(func=run, policy_command=name)


def run(args: argparse.Namespace) -> int:
    path = args.file or RuntimeSettings().policy or None
    try:
        loaded = load_policy(path)
    except PolicyError as exc:
        raise CliError(str(exc), exit_code=2) from None
    if args.json:
        out = {"source": loaded.source, "sha256": loaded.sha256}
        if args.policy_command == "show":
            out["snapshot"] = json.loads(loaded.snapshot_json)
        print_json(out)
    else:
        stdout.print(f"policy {loaded.source} ok, sha256 {loaded.sha256}")
        if args.policy_command == "show":
            stdout.print_json(loaded.snapshot_json)
    return 0
