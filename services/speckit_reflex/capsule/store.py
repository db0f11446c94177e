"""The database adapter of Capsule: the only code that talks SQL.

Synchronous SQLAlchemy on a pooled engine; the async core calls it through a
worker thread. Connection failures of any layer (SQLAlchemy, the DBAPI, the
pool) become `Unavailable`, and `pool_pre_ping` replaces dead connections on
the next checkout, so Capsule recovers by itself when the database returns.
"""

from __future__ import annotations

import base64
import functools
import json
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import psycopg
from sqlalchemy import Connection, Engine, case, create_engine, event, func, select, tuple_
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite

from speckit_reflex.capsule import migrate
from speckit_reflex.capsule.events import COLUMNS
from speckit_reflex.capsule.schema import BakeoffRunRow, EventRow, TrialRow
from speckit_reflex.capsule.stats import AttemptStats, attempt_stats, latency_histogram
from speckit_reflex.capsule.windows import TimeWindow
from speckit_reflex.errors import InvalidArgument, Unavailable

P = ParamSpec("P")
T = TypeVar("T")

_CONNECTION_ERRORS = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
)
_JSON_COLUMNS = frozenset(("payload", "request", "response"))
_JSON_INDEXES = tuple(i for i, c in enumerate(COLUMNS) if c in _JSON_COLUMNS)
_COPY_EVENTS = f"COPY events_incoming ({', '.join(COLUMNS)}) FROM STDIN"
_STAGE_TABLE = (
    "CREATE TEMP TABLE IF NOT EXISTS events_incoming "
    "(LIKE events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)
_MERGE_EVENTS = (
    f"INSERT INTO events ({', '.join(COLUMNS)}) SELECT {', '.join(COLUMNS)} "
    "FROM events_incoming ON CONFLICT (id) DO NOTHING"
)


def _db_call(fn: Callable[P, T]) -> Callable[P, T]:
    """Turn connection-level failures into Unavailable (gRPC UNAVAILABLE)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except _CONNECTION_ERRORS as exc:
            detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise Unavailable(f"database unavailable: {detail}") from None

    return wrapper


@dataclass(frozen=True)
class EventFilter:
    """What QueryEvents selects; zero values mean "any"."""

    type: int = 0
    mode: int = 0
    model: str = ""
    role: int = 0
    session_id: str = ""
    run_id: str = ""
    bakeoff_run_id: str = ""
    since_us: int | None = None
    until_us: int | None = None


@dataclass(frozen=True)
class UsageTotals:
    calls: int
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class TrialSummary:
    """Trials of one (mode, model): tasks tried, solved, solved on attempt 1."""

    mode: int
    model: str
    tasks: int
    successes: int
    first_attempt_successes: int
    mean_attempts: float
    json_valid: int


def make_engine(url: str) -> Engine:
    """A pooled engine for `url` with the settings Capsule relies on."""
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            # WAL lets statistics read while an append writes.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=5,
        pool_timeout=5,
        # Fail fast while the database is unreachable instead of hanging a call.
        connect_args={"connect_timeout": 3},
    )


def _encode_token(time_us: int, event_id: str) -> str:
    return base64.urlsafe_b64encode(f"{time_us}:{event_id}".encode()).decode()


def _decode_token(token: str) -> tuple[int, str]:
    try:
        t, eid = base64.urlsafe_b64decode(token.encode()).decode().split(":", 1)
        return int(t), eid
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument("page_token is not one this service issued") from None


class CapsuleStore:
    """Events, bakeoff runs and trials in one SQL database."""

    def __init__(self, engine: Engine, *, auto_create_schema: bool):
        self.engine = engine
        self._auto_create = auto_create_schema
        self._schema_ok = False
        self._schema_lock = threading.Lock()
        self._postgres = engine.dialect.name == "postgresql"

    @_db_call
    def ensure_schema(self) -> None:
        """Check (once) that the database is at the head revision.

        Raises SchemaNotCurrent for an old or missing schema, Unavailable when
        the database cannot be reached (the check is then retried next call).
        """
        if self._schema_ok:
            return
        with self._schema_lock:
            if not self._schema_ok:
                migrate.verify_schema(self.engine, auto_create=self._auto_create)
                self._schema_ok = True

    def close(self) -> None:
        self.engine.dispose()

    # -- events ---------------------------------------------------------------

    @_db_call
    def append_events(self, rows: Sequence[tuple[Any, ...]]) -> int:
        """Store rows (COLUMNS order) whose id is new; return how many were."""
        self.ensure_schema()
        if not rows:
            return 0
        with self.engine.begin() as conn:
            if self._postgres:
                return self._copy_events(conn, rows)
            stmt = sqlite.insert(EventRow.__table__).on_conflict_do_nothing(index_elements=["id"])
            result = conn.execute(stmt, [dict(zip(COLUMNS, r, strict=True)) for r in rows])
            return max(result.rowcount, 0)

    @staticmethod
    def _copy_events(conn: Connection, rows: Sequence[tuple[Any, ...]]) -> int:
        # COPY into a session-local staging table, then one INSERT ... ON
        # CONFLICT DO NOTHING: COPY's speed with per-id idempotency.
        record = conn.connection
        raw: psycopg.Connection = record.driver_connection  # type: ignore[assignment]
        with raw.cursor() as cur:
            if not record.info.get("events_incoming"):
                cur.execute(_STAGE_TABLE)
                record.info["events_incoming"] = True
            with cur.copy(_COPY_EVENTS) as copy:
                for row in rows:
                    if row[24] is not None or row[25] is not None or row[26] is not None:
                        row = tuple(
                            json.dumps(v) if i in _JSON_INDEXES and v is not None else v
                            for i, v in enumerate(row)
                        )
                    copy.write_row(row)
            cur.execute(_MERGE_EVENTS)
            return max(cur.rowcount, 0)

    @_db_call
    def query_events(self, f: EventFilter, page_size: int, page_token: str) -> tuple[list[Any], str]:
        """One page of events (oldest first) and the token of the next page."""
        self.ensure_schema()
        t = EventRow.__table__.c
        stmt = select(EventRow.__table__)
        for column, value in (
            (t.type, f.type), (t.mode, f.mode), (t.model, f.model), (t.role, f.role),
            (t.session_id, f.session_id), (t.run_id, f.run_id), (t.bakeoff_run_id, f.bakeoff_run_id),
        ):
            if value:
                stmt = stmt.where(column == value)
        if f.since_us is not None:
            stmt = stmt.where(t.time_us >= f.since_us)
        if f.until_us is not None:
            stmt = stmt.where(t.time_us < f.until_us)
        if page_token:
            after = _decode_token(page_token)
            stmt = stmt.where(tuple_(t.time_us, t.id) > tuple_(*after))
        stmt = stmt.order_by(t.time_us, t.id).limit(page_size + 1)
        with self.engine.connect() as conn:
            rows = list(conn.execute(stmt).mappings())
        if len(rows) <= page_size:
            return rows, ""
        last = rows[page_size - 1]
        return rows[:page_size], _encode_token(last["time_us"], last["id"])

    # -- statistics -----------------------------------------------------------

    @_db_call
    def attempt_stats(self, window: TimeWindow, bakeoff_run_id: str = "") -> AttemptStats:
        self.ensure_schema()
        with self.engine.begin() as conn:
            return attempt_stats(conn, window, bakeoff_run_id)

    @_db_call
    def latency_histogram(self, window: TimeWindow, bakeoff_run_id: str = "") -> dict[int, list[int]]:
        self.ensure_schema()
        with self.engine.connect() as conn:
            return latency_histogram(conn, window, bakeoff_run_id)

    @_db_call
    def usage(self, window: TimeWindow, event_type: int, mode: int) -> UsageTotals:
        """Calls and tokens of events of `event_type` (and `mode`, 0 = any)."""
        self.ensure_schema()
        t = EventRow.__table__.c
        stmt = select(
            func.count(), func.coalesce(func.sum(t.prompt_tokens), 0), func.coalesce(func.sum(t.completion_tokens), 0)
        ).where(t.type == event_type, t.time_us >= window.start_us, t.time_us < window.end_us)
        if mode:
            stmt = stmt.where(t.mode == mode)
        with self.engine.connect() as conn:
            calls, prompt, completion = conn.execute(stmt).one()
        return UsageTotals(int(calls), int(prompt), int(completion))

    # -- bakeoff runs and trials ----------------------------------------------

    def _insert(self) -> Callable[..., Any]:
        return postgresql.insert if self._postgres else sqlite.insert

    @_db_call
    def upsert_run(self, run: dict[str, Any]) -> dict[str, Any]:
        """Create or update a bakeoff run; return it as stored."""
        self.ensure_schema()
        table = BakeoffRunRow.__table__
        stmt = self._insert()(table).values(**run)
        stmt = stmt.on_conflict_do_update(
            index_elements=["id"], set_={k: stmt.excluded[k] for k in run if k != "id"}
        )
        with self.engine.begin() as conn:
            conn.execute(stmt)
            return dict(conn.execute(select(table).where(table.c.id == run["id"])).mappings().one())

    @_db_call
    def get_run(self, run_id: str) -> dict[str, Any] | None:
        self.ensure_schema()
        table = BakeoffRunRow.__table__
        with self.engine.connect() as conn:
            row = conn.execute(select(table).where(table.c.id == run_id)).mappings().first()
        return dict(row) if row else None

    @_db_call
    def record_trials(self, trials: Iterable[dict[str, Any]]) -> int:
        """Store trials whose id is new; return how many were."""
        self.ensure_schema()
        batch = list(trials)
        if not batch:
            return 0
        table = TrialRow.__table__
        # RETURNING counts the rows really inserted; executemany's rowcount
        # is not reliable across drivers.
        stmt = self._insert()(table).on_conflict_do_nothing(index_elements=["id"]).returning(table.c.id)
        with self.engine.begin() as conn:
            return len(conn.execute(stmt, batch).all())

    @_db_call
    def trial_summary(self, window: TimeWindow, bakeoff_run_id: str = "") -> list[TrialSummary]:
        """Per (mode, model) totals of the trials of a run, or of a window."""
        self.ensure_schema()
        t = TrialRow.__table__.c
        stmt = select(
            t.mode, t.model, func.count(),
            func.sum(case((t.success, 1), else_=0)),
            func.sum(case((t.success & (t.attempts <= 1), 1), else_=0)),
            func.avg(t.attempts),
            func.sum(case((t.json_valid, 1), else_=0)),
        ).group_by(t.mode, t.model).order_by(t.mode, t.model)
        if bakeoff_run_id:
            stmt = stmt.where(t.bakeoff_run_id == bakeoff_run_id)
        else:
            stmt = stmt.where(t.time_us >= window.start_us, t.time_us < window.end_us)
        with self.engine.connect() as conn:
            return [
                TrialSummary(r[0], r[1], int(r[2]), int(r[3] or 0), int(r[4] or 0), float(r[5] or 0), int(r[6] or 0))
                for r in conn.execute(stmt)
            ]
