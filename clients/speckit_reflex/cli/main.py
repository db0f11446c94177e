"""`speckit` command line: serve the services, inspect the policy, operate reflex.

Each command group lives in its own module with `register(subparsers)`.
Errors go to stderr with a non-zero exit; `--json` puts machine output on stdout.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from speckit_reflex.cli import completion, db, demo, llm, policy_cmd, reflex, serve
from speckit_reflex.cli.output import CliError, print_error

GROUPS = (serve, policy_cmd, db, llm, reflex, demo, completion)


def package_version() -> str:
    try:
        return version("speckit-reflex")
    except PackageNotFoundError:  # run from a source tree without installing
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speckit", description="speckit-reflex: the Implementer's reflex lane"
    )
    parser.add_argument(
        "--version", action="version", version=f"speckit-reflex {package_version()}"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print_error(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        print_error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
