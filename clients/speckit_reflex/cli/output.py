"""Shared CLI output: JSON on stdout for machines, rich tables for people,
errors on stderr.

Text is never cropped: on a terminal long cells and lines wrap at its width;
into a pipe or a file (no terminal, hence no width) every line is printed
whole, however long.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import grpc
from rich.console import Console
from rich.markup import escape
from rich.syntax import Syntax
from rich.table import Table

from speckit_reflex.clients.channel import ChannelConfig
from speckit_reflex.clients.errors import error_of

# Wide enough that no table or line of ours is ever cut when there is no
# terminal to fit (rich assumes 80 columns then).
_UNBOUNDED_WIDTH = 100_000


def console(*, stderr: bool = False) -> Console:
    """A Console that wraps at a terminal's width and never crops in a pipe."""
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=_UNBOUNDED_WIDTH)


stdout = console()
stderr = console(stderr=True)


class CliError(Exception):
    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def print_error(message: str) -> None:
    # One line however narrow the terminal (logs and scripts grep it); the
    # message is text, never markup ("[REDACTED]" must print as is).
    stderr.print(
        f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True, soft_wrap=True
    )


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    t = Table(title=title)
    for c in columns:
        # "fold" breaks a long token (an URL, a path) instead of eliding it.
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*["" if v is None else str(v) for v in r])
    stdout.print(t)


SERVICE_TITLES = {
    "router": "Router",
    "inference": "Inference Adapter",
    "patchloop": "PatchLoop",
    "capsule": "Capsule",
}


def print_diff(diff: str) -> None:
    """A unified diff: coloured and wrapped on a terminal, verbatim otherwise."""
    if stdout.is_terminal:
        stdout.print(Syntax(diff, "diff", theme="ansi_dark", word_wrap=True))
    else:
        sys.stdout.write(diff if diff.endswith("\n") else diff + "\n")
        sys.stdout.flush()


def rpc_error(service: str, exc: grpc.RpcError, address: str = "") -> CliError:
    """A CliError that says which service failed and how, without a traceback:
    the code, the ErrorInfo reason and metadata the service sent, its message."""
    err = error_of(exc)
    code = err.code
    address = address or ChannelConfig.from_env(service).address
    if code == grpc.StatusCode.UNIMPLEMENTED:
        # Something answers gRPC there, but not this service: usually two
        # SPECKIT_*_ADDR variables swapped, or another program on the port.
        name = SERVICE_TITLES.get(service, service)
        article = "an" if name[0] in "AEIOU" else "a"
        return CliError(
            f"{address} is not {article} {name} (the server there answered UNIMPLEMENTED; "
            f"check SPECKIT_{service.upper()}_ADDR)"
        )
    hint = ""
    if code == grpc.StatusCode.UNAVAILABLE and not err.reason_text:
        # No ErrorInfo: the service never answered (an answered UNAVAILABLE,
        # such as Inference's all_backends_failed, says why itself).
        hint = (
            f" (at {address}: is `speckit serve all` running? addresses come from SPECKIT_*_ADDR)"
        )
    # The reason and metadata, unless they would only repeat the code.
    why = " ".join(
        [
            *([err.reason_text] if err.reason_text not in ("", code.name) else []),
            *(f"{k}={v}" for k, v in sorted(err.metadata.items())),
        ]
    )
    why = f" [{why}]" if why else ""
    return CliError(f"{service}: {code.name}{why}: {err.message}{hint}")
