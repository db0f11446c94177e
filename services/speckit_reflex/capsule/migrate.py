"""Schema migrations run from code, and the schema check a service runs on start.

The URL always comes from the caller (the runtime settings), never from
alembic.ini. Migration scripts live in the repository's `migrations/` folder,
shipped in the wheel as this package's `migrations/` (SCRIPT_LOCATION).
"""

from __future__ import annotations

from dataclasses import dataclass

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, inspect, pool, text

from speckit_reflex.errors import FailedPrecondition

# The migration scripts as a resource of this package, in Alembic's
# "package:folder" form (read through importlib.resources). The folder is the
# repository's top-level migrations/, which capsule/migrations links to, so a
# wheel carries it here and a source checkout reads it in place.
SCRIPT_LOCATION = "speckit_reflex.capsule:migrations"
UPGRADE_HINT = "run `speckit db upgrade` (it reads SPECKIT_DATABASE_URL)"
# Key of the Postgres advisory lock that serialises migrations, so that
# replicas starting together on an empty database create it once.
_MIGRATION_LOCK_KEY = 0x5EC_4B17


class SchemaNotCurrent(FailedPrecondition):
    """The database is not at this software's schema revision."""


@dataclass(frozen=True)
class SchemaState:
    """Where a database stands relative to the migration chain."""

    current: str | None
    head: str
    empty: bool

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


def alembic_config(url: str = "") -> Config:
    """An Alembic Config pointing at `migrations/`, built in code."""
    cfg = Config()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    if url:
        # ConfigParser interpolation would choke on '%' in passwords.
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    """The single head of the migration chain."""
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise RuntimeError(
            f"migration chain has {len(heads)} heads ({', '.join(heads)}); expected one"
        )
    return heads[0]


def schema_state(engine: Engine) -> SchemaState:
    """The database's current revision, the chain's head, and whether it is empty."""
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
        empty = not inspect(conn).get_table_names()
    return SchemaState(current=current, head=head_revision(), empty=empty)


def upgrade(engine: Engine, revision: str = "head") -> SchemaState:
    """Migrate the database behind `engine` to `revision` (default: head)."""
    cfg = alembic_config()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Held to the end of this transaction; DDL is transactional in
            # Postgres, so a waiter then finds the schema already at head.
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    return schema_state(engine)


def upgrade_url(url: str, revision: str = "head") -> SchemaState:
    """`upgrade()` for a URL, with a throwaway engine."""
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        return upgrade(engine, revision)
    finally:
        engine.dispose()


def verify_schema(engine: Engine, *, auto_create: bool) -> SchemaState:
    """Refuse a database that is not at head; optionally create a fresh one.

    The rule, the same for SQLite and PostgreSQL: a database with no tables
    at all is given the schema when Capsule starts (`auto_create`); one at
    an older revision is never migrated implicitly, that is an operator's
    step (`speckit db upgrade`).
    """
    state = schema_state(engine)
    if state.up_to_date:
        return state
    if state.current is None and state.empty and auto_create:
        return upgrade(engine)
    url = engine.url.render_as_string(hide_password=True)
    if state.current is None:
        raise SchemaNotCurrent(f"database {url} has no speckit schema; {UPGRADE_HINT}")
    known = {s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
    if state.current not in known:
        raise SchemaNotCurrent(
            f"database {url} is at revision {state.current}, newer than this software knows "
            f"(head {state.head}); upgrade speckit-reflex"
        )
    raise SchemaNotCurrent(
        f"database {url} is at schema revision {state.current}, older than {state.head}; {UPGRADE_HINT}"
    )
