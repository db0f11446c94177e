"""Alembic environment for Capsule's schema.

Run from code (`speckit db upgrade`, the Capsule service), a connection is
handed in through `config.attributes["connection"]`. Run as the standalone
`alembic` command, the URL comes from the runtime settings (SPECKIT_*), never
from alembic.ini, so there is one source of truth for where the database is.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from speckit_reflex.capsule.schema import Base
from speckit_reflex.runtime.settings import RuntimeSettings

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things in place; batch mode copies tables.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url") or RuntimeSettings().effective_database_url()
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run `speckit db upgrade`")
run_migrations_online()
