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
import math
import operator
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import psycopg
from sqlalchemy import (
    Connection,
    Engine,
    case,
    create_engine,
    event,
    func,
    select,
    text,
    tuple_,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy import true as sa_true
from sqlalchemy.dialects import postgresql, sqlite

from speckit_reflex.capsule import migrate
from speckit_reflex.capsule.events import COLUMNS
from speckit_reflex.capsule.rollups import (
    COUNTER_COLUMNS,
    SAMPLE_COLUMNS,
    RollupIncrement,
    add_bins,
    decode_bins,
    encode_bins,
    rollup_increments,
)
from speckit_reflex.capsule.schema import (
    PATCH_ATTEMPT,
    BakeoffRunRow,
    EventRow,
    RunCaptureRow,
    TrialRow,
)
from speckit_reflex.capsule.stats import (
    EXACT_PERCENTILE_LIMIT,
    AttemptStats,
    attempt_stats,
    latency_histogram,
)
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
_TYPE = COLUMNS.index("type")
# Where each rollups.SAMPLE_COLUMNS value sits in an ingest row.
_SAMPLE_INDEXES = tuple(COLUMNS.index(c) for c in SAMPLE_COLUMNS)
_COLUMN_LIST = ", ".join(COLUMNS)
_COPY_EVENTS = f"COPY events ({_COLUMN_LIST}) FROM STDIN"
_COPY_STAGED = f"COPY events_incoming ({_COLUMN_LIST}) FROM STDIN"
_STAGE_TABLE = (
    "CREATE TEMP TABLE IF NOT EXISTS events_incoming "
    "(LIKE events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)
# RETURNING names the rows really inserted: only they reach the rollups.
_MERGE_EVENTS = (
    f"INSERT INTO events ({_COLUMN_LIST}) SELECT {_COLUMN_LIST} "
    f"FROM events_incoming ON CONFLICT (id) DO NOTHING RETURNING type, {', '.join(SAMPLE_COLUMNS)}"
)
_ROLLUP_COLUMNS = ("bucket_us", "mode", "model", *COUNTER_COLUMNS, "latency_bins", "ttft_bins")
_ROLLUP_KEY = "bucket_us = :bucket_us AND mode = :mode AND model = :model"
# Where a read rollup row keeps its counters and its two histograms.
_COUNTERS_AT = slice(3, 3 + len(COUNTER_COLUMNS))
_LATENCY_AT, _TTFT_AT = _ROLLUP_COLUMNS.index("latency_bins"), _ROLLUP_COLUMNS.index("ttft_bins")
# Rollup rows are read, merged in Python and written back under row locks:
# first every key of the batch is claimed (an empty row where none exists),
# then the hours' rows are locked in key order, so two writers never wait on
# each other in opposite orders.
_CLAIM_ROLLUPS = (
    f"INSERT INTO attempt_rollups ({', '.join(_ROLLUP_COLUMNS)}) "
    f"VALUES (:bucket_us, :mode, :model, {', '.join('0' for _ in COUNTER_COLUMNS)}, '[]', '[]') "
    "ON CONFLICT (bucket_us, mode, model) DO NOTHING"
)
_READ_ROLLUPS = (
    f"SELECT {', '.join(_ROLLUP_COLUMNS)} FROM attempt_rollups "
    "WHERE bucket_us >= :first AND bucket_us <= :last ORDER BY bucket_us, mode, model"
)
_WRITE_ROLLUPS = f"UPDATE attempt_rollups SET {', '.join(f'{c} = :{c}' for c in _ROLLUP_COLUMNS[3:])} WHERE {_ROLLUP_KEY}"


# SQLSTATE classes of faults that pass: connection (08), insufficient
# resources (53), operator intervention (57: shutdown, cancel), serialization
# failure and deadlock (40001, 40P01), lock not available (55P03).
_TRANSIENT_SQLSTATES = ("08", "53", "57", "40001", "40P01", "55P03")
# Faults of the data itself, which no retry fixes: data exceptions (22, e.g.
# a NUL byte, a number out of range), integrity (23), program limits (54,
# e.g. an index row too large).
_DATA_SQLSTATES = ("22", "23", "54")


def _classify(exc: BaseException) -> Exception | None:
    """The domain error of a database failure, or None for a bug (INTERNAL).

    Only faults that pass are Unavailable, which callers retry; the
    database refusing the data is InvalidArgument, never retried.
    """
    orig = getattr(exc, "orig", None) or exc
    detail = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    state = getattr(orig, "sqlstate", None) or ""
    if state.startswith(_DATA_SQLSTATES) or isinstance(
        orig,
        (
            psycopg.DataError,
            psycopg.IntegrityError,
            sqlite3.DataError,
            sqlite3.IntegrityError,
            OverflowError,
        ),
    ):
        return InvalidArgument(f"the database refused the data: {detail}")
    if state.startswith(_TRANSIENT_SQLSTATES) or (
        not state and isinstance(exc, _CONNECTION_ERRORS)
    ):
        return Unavailable(f"database unavailable: {detail}")
    return None


def _db_call(fn: Callable[P, T]) -> Callable[P, T]:
    """Turn database failures into domain errors: Unavailable (gRPC
    UNAVAILABLE) for faults that pass, InvalidArgument for refused data."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except (sa_exc.SQLAlchemyError, psycopg.Error, sqlite3.Error, OverflowError) as exc:
            mapped = _classify(exc)
            if mapped is None:
                raise
            raise mapped from None

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


# "postgres://" (libpq's and Heroku's spelling) is unknown to SQLAlchemy, and
# psycopg2 is not installed: only psycopg 3 is a dependency.
_REFUSED_SCHEMES = ("postgres", "postgresql+psycopg2")


def database_url(url: str) -> str:
    """`url` as make_engine uses it, or a one-line InvalidArgument.

    A bare "postgresql://" means psycopg 3 here whatever SQLAlchemy's default
    driver for it is (psycopg2 in SQLAlchemy 2.0).
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    if scheme.lower() in _REFUSED_SCHEMES:
        shown = rest.split("@", 1)[-1]  # never echo a password
        raise InvalidArgument(
            f"SPECKIT_DATABASE_URL: {scheme}:// is not supported; use postgresql+psycopg:// (psycopg 3), "
            f"e.g. postgresql+psycopg://user@{shown}"
        )
    if scheme.lower() == "postgresql":
        return f"postgresql+psycopg://{rest}"
    return url


def make_engine(url: str) -> Engine:
    """A pooled engine for `url` with the settings Capsule relies on."""
    url = database_url(url)
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: sqlite3.Connection, _record: object) -> None:
            # WAL lets statistics read while an append writes.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            try:  # the statistics' histogram bins use ln() and ceil()
                cur.execute("SELECT ln(2.0), ceil(1.5)")
            except sqlite3.OperationalError:
                dbapi_conn.create_function("ln", 1, math.log, deterministic=True)
                dbapi_conn.create_function("ceil", 1, math.ceil, deterministic=True)
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


def capture_page_token(row: dict[str, Any]) -> str:
    """The token of the captures page that continues after `row`."""
    return _encode_token(row["started_us"], row["run_id"])


def _decode_token(token: str) -> tuple[int, str]:
    try:
        t, eid = base64.urlsafe_b64decode(token.encode()).decode().split(":", 1)
        time_us = int(t)
    except (ValueError, UnicodeDecodeError):
        time_us, eid = -1, ""
    # A forged token must not carry what the database refuses (a 64-bit overflow, NUL).
    if not 0 <= time_us < 2**63 or "\x00" in eid or not eid:
        raise InvalidArgument("page_token: not one this service issued")
    return time_us, eid


_sample_of = operator.itemgetter(*_SAMPLE_INDEXES)
_J1, _J2, _J3 = _JSON_INDEXES


def _copy_rows(cur: psycopg.Cursor[Any], sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
    with cur.copy(sql) as copy:
        for row in rows:
            if row[_J1] is not None or row[_J2] is not None or row[_J3] is not None:
                row = tuple(
                    json.dumps(v) if i in _JSON_INDEXES and v is not None else v
                    for i, v in enumerate(row)
                )
            copy.write_row(row)


def _pg_insert_events(
    raw: psycopg.Connection[Any], rows: Sequence[tuple[Any, ...]]
) -> tuple[int, list[tuple[Any, ...]]]:
    """(how many rows were new, the samples of the new PatchAttempt rows).

    COPY straight into events is the fast path. An id already stored, or
    repeated within the batch, fails that COPY as a whole; the batch then goes
    through a staging table and INSERT ... ON CONFLICT DO NOTHING RETURNING,
    which names exactly the rows that were new.
    """
    with raw.cursor() as cur:
        cur.execute("SAVEPOINT events_copy")
        try:
            _copy_rows(cur, _COPY_EVENTS, rows)
        except psycopg.errors.UniqueViolation:
            cur.execute("ROLLBACK TO SAVEPOINT events_copy")
        else:
            return len(rows), [_sample_of(r) for r in rows if r[_TYPE] == PATCH_ATTEMPT]
        cur.execute(_STAGE_TABLE)
        _copy_rows(cur, _COPY_STAGED, rows)
        cur.execute(_MERGE_EVENTS)
        returned = cur.fetchall()
    return len(returned), [r[1:] for r in returned if r[0] == PATCH_ATTEMPT]


def _sqlite_insert_events(
    conn: Connection, rows: Sequence[tuple[Any, ...]]
) -> tuple[int, list[tuple[Any, ...]]]:
    """As _pg_insert_events, for SQLite: one INSERT ... ON CONFLICT DO NOTHING RETURNING."""
    t = EventRow.__table__.c
    stmt = (
        sqlite.insert(EventRow)
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(t.type, *(t[c] for c in SAMPLE_COLUMNS))
    )
    returned = conn.execute(stmt, [dict(zip(COLUMNS, r, strict=True)) for r in rows]).all()
    return len(returned), [tuple(r[1:]) for r in returned if r[0] == PATCH_ATTEMPT]


def _add_rollups(conn: Connection, increments: list[RollupIncrement], *, postgres: bool) -> None:
    """Add a batch's increments (sorted by key) to the rollup rows."""
    conn.execute(
        text(_CLAIM_ROLLUPS),
        [{"bucket_us": i.bucket_us, "mode": i.mode, "model": i.model} for i in increments],
    )
    # SQLite already holds the database's write lock (the events insert took it).
    read = _READ_ROLLUPS + (" FOR UPDATE" if postgres else "")
    span = {"first": increments[0].bucket_us, "last": increments[-1].bucket_us}
    stored = {tuple(r[:3]): r for r in conn.execute(text(read), span)}
    updates = []
    for inc in increments:
        row = stored[inc.key]
        latency, ttft = decode_bins(row[_LATENCY_AT]), decode_bins(row[_TTFT_AT])
        add_bins(latency, inc.latency_bins)
        add_bins(ttft, inc.ttft_bins)
        values = [a + b for a, b in zip(row[_COUNTERS_AT], inc.counters, strict=True)]
        updates.append(
            {
                "bucket_us": inc.bucket_us,
                "mode": inc.mode,
                "model": inc.model,
                **dict(zip(COUNTER_COLUMNS, values, strict=True)),
                "latency_bins": encode_bins(latency),
                "ttft_bins": encode_bins(ttft),
            }
        )
    conn.execute(text(_WRITE_ROLLUPS), updates)


class CapsuleStore:
    """Events, bakeoff runs and trials in one SQL database."""

    def __init__(
        self,
        engine: Engine,
        *,
        auto_create_schema: bool,
        exact_percentile_limit: int = EXACT_PERCENTILE_LIMIT,
    ):
        self.engine = engine
        self._exact_limit = exact_percentile_limit
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
        """Store rows (COLUMNS order) whose id is new; return how many were.

        The rollups of the new PatchAttempt rows are updated in the same
        transaction, so statistics never see one without the other, and a
        replayed event (not new) is never counted twice.
        """
        self.ensure_schema()
        if not rows:
            return 0
        with self.engine.begin() as conn:
            raw = conn.connection.driver_connection
            if isinstance(raw, psycopg.Connection):  # PostgreSQL (psycopg 3 only): COPY
                inserted, samples = _pg_insert_events(raw, rows)
            else:
                inserted, samples = _sqlite_insert_events(conn, rows)
            if samples:
                _add_rollups(conn, rollup_increments(samples), postgres=self._postgres)
            return inserted

    @_db_call
    def query_events(
        self, f: EventFilter, page_size: int, page_token: str
    ) -> tuple[list[Any], str]:
        """One page of events (oldest first) and the token of the next page."""
        self.ensure_schema()
        t = EventRow.__table__.c
        stmt = select(EventRow.__table__)
        for column, value in (
            (t.type, f.type),
            (t.mode, f.mode),
            (t.model, f.model),
            (t.role, f.role),
            (t.session_id, f.session_id),
            (t.run_id, f.run_id),
            (t.bakeoff_run_id, f.bakeoff_run_id),
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
        with self.engine.connect() as conn:
            if self._postgres:
                # Counters and histograms are read by two statements: one
                # snapshot keeps them consistent while appends commit.
                conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                return attempt_stats(conn, window, bakeoff_run_id, self._exact_limit)

    @_db_call
    def latency_histogram(
        self, window: TimeWindow, bakeoff_run_id: str = ""
    ) -> dict[int, list[int]]:
        self.ensure_schema()
        with self.engine.connect() as conn:
            if self._postgres:
                conn.execution_options(isolation_level="REPEATABLE READ")  # as attempt_stats
            with conn.begin():
                return latency_histogram(conn, window, bakeoff_run_id, self._exact_limit)

    @_db_call
    def usage(self, window: TimeWindow, event_type: int, mode: int) -> UsageTotals:
        """Calls and tokens of events of `event_type` (and `mode`, 0 = any)."""
        self.ensure_schema()
        t = EventRow.__table__.c
        stmt = select(
            func.count(),
            func.coalesce(func.sum(t.prompt_tokens), 0),
            func.coalesce(func.sum(t.completion_tokens), 0),
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
    def verdict_runs(
        self, window: TimeWindow, suite: str, bakeoff_run_id: str = ""
    ) -> list[dict[str, Any]]:
        """The runs a verdict is formed from, newest first: one run by id, or
        the suite's runs that started in the window."""
        self.ensure_schema()
        r = BakeoffRunRow.__table__.c
        stmt = select(BakeoffRunRow.__table__)
        if bakeoff_run_id:
            stmt = stmt.where(r.id == bakeoff_run_id)
        else:
            stmt = stmt.where(
                r.suite == suite, r.started_us >= window.start_us, r.started_us < window.end_us
            )
        with self.engine.connect() as conn:
            return [
                dict(m) for m in conn.execute(stmt.order_by(r.started_us.desc(), r.id)).mappings()
            ]

    @_db_call
    def trials_of_runs(
        self, run_ids: Sequence[str], mode: int | None = None
    ) -> list[dict[str, Any]]:
        """Every trial of the runs, in the runs' order, newest first within a run."""
        if not run_ids:
            return []
        self.ensure_schema()
        t = TrialRow.__table__.c
        stmt = select(TrialRow.__table__).where(t.bakeoff_run_id.in_(list(run_ids)))
        if mode is not None:
            stmt = stmt.where(t.mode == mode)
        with self.engine.connect() as conn:
            rows = [dict(m) for m in conn.execute(stmt.order_by(t.time_us.desc(), t.id)).mappings()]
        order = {rid: i for i, rid in enumerate(run_ids)}
        return sorted(rows, key=lambda row: order[row["bakeoff_run_id"]])

    @_db_call
    def baseline_run(
        self, suite: str, suite_version: int, exclude: Sequence[str], mode: int, digest: str = ""
    ) -> dict[str, Any] | None:
        """The newest other run of the same suite version (and digest, when
        given) with a trial of `mode` that ran."""
        self.ensure_schema()
        r, t = BakeoffRunRow.__table__.c, TrialRow.__table__.c
        has_trials = (
            select(t.id).where(t.bakeoff_run_id == r.id, t.mode == mode, t.skipped == "").exists()
        )
        stmt = (
            select(BakeoffRunRow.__table__)
            .where(
                r.suite == suite,
                r.suite_version == suite_version,
                r.suite_digest == digest if digest else sa_true(),
                r.id.not_in(list(exclude)),
                has_trials,
            )
            .order_by(r.started_us.desc(), r.id)
            .limit(1)
        )
        with self.engine.connect() as conn:
            row = conn.execute(stmt).mappings().first()
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
        stmt = (
            self._insert()(table)
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(table.c.id)
        )
        with self.engine.begin() as conn:
            return len(conn.execute(stmt, batch).all())

    @_db_call
    def trial_summary(self, window: TimeWindow, bakeoff_run_id: str = "") -> list[TrialSummary]:
        """Per (mode, model) totals of the trials of a run, or of a window."""
        self.ensure_schema()
        t = TrialRow.__table__.c
        stmt = (
            select(
                t.mode,
                t.model,
                func.count(),
                func.sum(case((t.success, 1), else_=0)),
                func.sum(case((t.success & (t.attempts <= 1), 1), else_=0)),
                func.avg(t.attempts),
                func.sum(case((t.json_valid, 1), else_=0)),
            )
            .group_by(t.mode, t.model)
            .order_by(t.mode, t.model)
        )
        if bakeoff_run_id:
            stmt = stmt.where(t.bakeoff_run_id == bakeoff_run_id)
        else:
            stmt = stmt.where(t.time_us >= window.start_us, t.time_us < window.end_us)
        with self.engine.connect() as conn:
            return [
                TrialSummary(
                    r[0],
                    r[1],
                    int(r[2]),
                    int(r[3] or 0),
                    int(r[4] or 0),
                    float(r[5] or 0),
                    int(r[6] or 0),
                )
                for r in conn.execute(stmt)
            ]

    # -- run captures -----------------------------------------------------------

    @_db_call
    def put_capture(self, row: dict[str, Any]) -> dict[str, Any]:
        """Create or complete a run's capture: a part sent later never erases
        what an earlier part stored (only the keys in `row` are written)."""
        self.ensure_schema()
        table = RunCaptureRow.__table__
        stmt = self._insert()(table).values(**row)
        update = {k: stmt.excluded[k] for k in row if k not in ("run_id", "started_us")}
        stmt = (
            stmt.on_conflict_do_update(index_elements=["run_id"], set_=update)
            if update
            else stmt.on_conflict_do_nothing(index_elements=["run_id"])
        )
        with self.engine.begin() as conn:
            conn.execute(stmt)
            found = conn.execute(
                select(table.c.files.is_not(None).label("has_files"), table.c.fixed).where(
                    table.c.run_id == row["run_id"]
                )
            )
            return dict(found.mappings().one())

    @_db_call
    def get_capture(self, run_id: str) -> dict[str, Any] | None:
        self.ensure_schema()
        table = RunCaptureRow.__table__
        with self.engine.connect() as conn:
            row = conn.execute(select(table).where(table.c.run_id == run_id)).mappings().first()
        return dict(row) if row else None

    @_db_call
    def list_captures(
        self,
        window: TimeWindow,
        fixed_only: bool,
        include_files: bool,
        page_size: int,
        page_token: str,
    ) -> tuple[list[dict[str, Any]], str]:
        """One page of captures started in the window, newest first, and the next page's token."""
        self.ensure_schema()
        c = RunCaptureRow.__table__.c
        columns = [col for col in c if include_files or col.name not in ("files", "fix_files")]
        stmt = select(*columns).where(c.started_us >= window.start_us, c.started_us < window.end_us)
        if fixed_only:
            stmt = stmt.where(c.fixed.is_(True))
        if page_token:
            before = _decode_token(page_token)
            stmt = stmt.where(tuple_(c.started_us, c.run_id) < tuple_(*before))
        stmt = stmt.order_by(c.started_us.desc(), c.run_id.desc()).limit(page_size + 1)
        with self.engine.connect() as conn:
            rows = [dict(m) for m in conn.execute(stmt).mappings()]
        if len(rows) <= page_size:
            return rows, ""
        last = rows[page_size - 1]
        return rows[:page_size], _encode_token(last["started_us"], last["run_id"])

    @_db_call
    def fixed_runs_not_captured(self, window: TimeWindow, loop_result: int) -> int:
        """Fixed runs (LoopResult events) of the window without a stored workspace."""
        self.ensure_schema()
        e, c = EventRow.__table__.c, RunCaptureRow.__table__.c
        captured = select(c.run_id).where(c.run_id == e.run_id, c.files.is_not(None)).exists()
        stmt = select(func.count()).where(
            e.type == loop_result,
            e.success.is_(True),
            e.time_us >= window.start_us,
            e.time_us < window.end_us,
            ~captured,
        )
        with self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())
