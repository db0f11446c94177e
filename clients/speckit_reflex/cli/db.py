"""`speckit db upgrade` and `speckit db current`: Capsule's schema migrations.

The database URL comes from the runtime settings (SPECKIT_DATABASE_URL; the
SQLite file under .speckit/ by default), the same place the service reads it.
These commands run locally against the database (migrations are an
operator's step, not an RPC).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from speckit_reflex.cli.output import CliError, print_json, table
from speckit_reflex.runtime.settings import RuntimeSettings

# SQLAlchemy and Alembic are imported when a db command runs, not when the
# CLI starts: every other command would pay ~0.5-1 s for them otherwise.
if TYPE_CHECKING:
    from sqlalchemy import Engine

T = TypeVar("T")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("db", help="Capsule database schema: upgrade, current revision")
    dsub = p.add_subparsers(dest="db_command", required=True, metavar="SUBCOMMAND")
    up = dsub.add_parser("upgrade", help="migrate the database to the latest schema")
    up.add_argument("--revision", default="head", help="target revision (default: head)")
    up.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    up.set_defaults(func=run_upgrade)
    cur = dsub.add_parser("current", help="show the database's schema revision and the latest one")
    cur.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    cur.set_defaults(func=run_current)


def _show(url: str, state: Any, as_json: bool, **extra: object) -> None:
    doc = {
        "database": url,
        **extra,
        "current": state.current,
        "head": state.head,
        "up_to_date": state.up_to_date,
    }
    if as_json:
        print_json(doc)
    else:
        table("speckit database", ["key", "value"], [[k, v] for k, v in doc.items()])


def _on_database(work: Callable[[Engine], T]) -> tuple[str, T]:
    """Run `work` on the settings' database; an unreachable one is a CliError."""
    from sqlalchemy import exc as sa_exc

    from speckit_reflex.capsule.store import make_engine
    from speckit_reflex.errors import DomainError

    url = RuntimeSettings().effective_database_url()
    try:
        engine = make_engine(url)
    except DomainError as exc:
        raise CliError(exc.message) from None
    shown = engine.url.render_as_string(hide_password=True)
    try:
        return shown, work(engine)
    except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
        detail = str(exc.orig or exc).strip().splitlines()[0]
        raise CliError(f"cannot reach database {shown}: {detail}") from None
    finally:
        engine.dispose()


def run_upgrade(args: argparse.Namespace) -> int:
    from speckit_reflex.capsule import migrate

    def work(engine: Engine) -> tuple[str | None, migrate.SchemaState]:
        before = migrate.schema_state(engine).current
        return before, migrate.upgrade(engine, args.revision)

    shown, (before, state) = _on_database(work)
    _show(shown, state, args.json, previous=before)
    return 0


def run_current(args: argparse.Namespace) -> int:
    from speckit_reflex.capsule import migrate

    shown, state = _on_database(migrate.schema_state)
    _show(shown, state, args.json)
    # Non-zero when behind, so scripts can gate on it.
    return 0 if state.up_to_date else 3
