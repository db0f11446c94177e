"""Shared CLI output: JSON on stdout for machines, rich tables for people,
errors on stderr."""

from __future__ import annotations

import json
import sys
from typing import Any

import grpc
from rich.console import Console
from rich.table import Table

stdout = Console()
stderr = Console(stderr=True)


class CliError(Exception):
    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def print_error(message: str) -> None:
    stderr.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*["" if v is None else str(v) for v in r])
    stdout.print(t)


def rpc_error(service: str, exc: grpc.aio.AioRpcError) -> CliError:
    """A CliError that says which service failed and how, without a traceback."""
    code = exc.code()
    hint = ""
    if code == grpc.StatusCode.UNAVAILABLE:
        hint = " (is `speckit serve all` running? addresses come from SPECKIT_*_ADDR)"
    return CliError(f"{service}: {code.name}: {exc.details()}{hint}")
