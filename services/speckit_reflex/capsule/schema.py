"""Capsule's database schema: typed SQLAlchemy 2 models.

Alembic migrations (`migrations/`) are the only way this schema reaches a
database; these models are what `alembic check` compares against.

Two choices that serve both dialects and the hot paths:
- Times are `*_us` integers, microseconds since the Unix epoch in UTC. They
  compare, index and COPY identically on PostgreSQL and SQLite, and converting
  a protobuf Timestamp to one is a multiply and an add.
- Enums (type, role, mode, stage) are the v1 proto numbers as SMALLINT. Proto
  numbers are never renumbered, so they are stable identifiers; the windowed
  statistics filter on them millions of times.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Text,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from speckit_reflex.capsule.rollups import SAMPLE_COLUMNS

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# JSONB on PostgreSQL (indexable, compact), JSON text on SQLite.
JsonDoc = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")

# EventType.EVENT_TYPE_PATCH_ATTEMPT: the bakeoff statistics read only these.
PATCH_ATTEMPT = 3


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class EventRow(Base):
    """One capsule event (the v1 `Event` envelope, flattened)."""

    __tablename__ = "events"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    type: Mapped[int] = mapped_column(SmallInteger)
    time_us: Mapped[int] = mapped_column(BigInteger)
    role: Mapped[int] = mapped_column(SmallInteger, default=0)
    mode: Mapped[int] = mapped_column(SmallInteger, default=0)
    model: Mapped[str] = mapped_column(Text, default="")
    backend: Mapped[str] = mapped_column(Text, default="")
    stage: Mapped[int] = mapped_column(SmallInteger, default=0)
    session_id: Mapped[str] = mapped_column(Text, default="")
    run_id: Mapped[str] = mapped_column(Text, default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    is_fallback: Mapped[bool] = mapped_column(Boolean, default=False)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    # NULL = the server did not report it (unknown), which is not 0.
    cached_tokens: Mapped[int | None] = mapped_column(Integer)
    tokens_per_s: Mapped[float] = mapped_column(Float, default=0.0)
    success: Mapped[bool | None] = mapped_column(Boolean)
    json_valid: Mapped[bool | None] = mapped_column(Boolean)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    policy_hash: Mapped[str] = mapped_column(Text, default="")
    bakeoff_run_id: Mapped[str] = mapped_column(Text, default="")
    task_id: Mapped[str] = mapped_column(Text, default="")
    payload: Mapped[Any] = mapped_column(JsonDoc, nullable=True)
    # Stored only under capture mode full_io (after redaction).
    request: Mapped[Any] = mapped_column(JsonDoc, nullable=True)
    response: Mapped[Any] = mapped_column(JsonDoc, nullable=True)
    capture_mode: Mapped[str] = mapped_column(String(16), default="none")
    request_sha256: Mapped[str] = mapped_column(String(64), default="")
    response_sha256: Mapped[str] = mapped_column(String(64), default="")
    # W3C trace context of the recording span ("" = not traced).
    trace_id: Mapped[str] = mapped_column(String(32), default="", server_default="")
    span_id: Mapped[str] = mapped_column(String(16), default="", server_default="")

    __table_args__ = (
        # Windowed reads by type (usage, QueryEvents by type) and by time.
        Index("ix_events_type_time_us", "type", "time_us"),
        Index("ix_events_time_us", "time_us"),
        Index("ix_events_session_id_time_us", "session_id", "time_us"),
        # The bakeoff statistics read PatchAttempt rows in a time window:
        # on PostgreSQL this partial index carries every column they need, so
        # the statistics are an index-only scan that never touches the heap.
        Index(
            "ix_events_attempts_time_us",
            "time_us",
            # The index key is time_us; the rest of an attempt's sample rides along.
            postgresql_include=[c for c in SAMPLE_COLUMNS if c != "time_us"],
            postgresql_where=text(f"type = {PATCH_ATTEMPT}"),
            sqlite_where=text(f"type = {PATCH_ATTEMPT}"),
        ),
    )


class BakeoffRunRow(Base):
    """One run of a bakeoff suite."""

    __tablename__ = "bakeoff_runs"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    suite: Mapped[str] = mapped_column(Text, default="")
    mode: Mapped[str] = mapped_column(String(16), default="")
    status: Mapped[str] = mapped_column(String(16), default="")
    started_us: Mapped[int | None] = mapped_column(BigInteger)
    finished_us: Mapped[int | None] = mapped_column(BigInteger)
    task_count: Mapped[int] = mapped_column(Integer, default=0)
    summary: Mapped[Any] = mapped_column(JsonDoc, nullable=True)
    # The suite manifest's version: parity baselines pair runs of one version.
    suite_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # sha256 of the suite's tasks: verdicts never mix runs of two digests.
    suite_digest: Mapped[str] = mapped_column(Text, default="", server_default="")


class RunCaptureRow(Base):
    """The workspace a PatchLoop run started from and the fix it verified
    (capture.mode = full_io only; what `speckit reflex harvest` reads)."""

    __tablename__ = "run_captures"

    run_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    session_id: Mapped[str] = mapped_column(Text, default="")
    started_us: Mapped[int] = mapped_column(BigInteger)
    workspace: Mapped[str] = mapped_column(Text, default="")
    # {"<path>": "<text>"}, redacted; null when not captured (see skipped).
    files: Mapped[Any] = mapped_column(JsonDoc, nullable=True)
    snapshot_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    skipped: Mapped[str] = mapped_column(Text, default="")
    # [{"code", "message", "file", "line", "column"}] of the first build.
    errors: Mapped[Any] = mapped_column(JsonDoc, nullable=True)
    build_profile: Mapped[str] = mapped_column(Text, default="")
    verify_profile: Mapped[str] = mapped_column(Text, default="")
    fixed: Mapped[bool] = mapped_column(Boolean, default=False)
    fixed_by: Mapped[str] = mapped_column(Text, default="")
    diff: Mapped[str] = mapped_column(Text, default="")
    # {"<path>": "<text>" | null (removed)}: the fixed content of changed files.
    fix_files: Mapped[Any] = mapped_column(JsonDoc, nullable=True)
    finished_us: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_run_captures_started_us", "started_us"),)


class TrialRow(Base):
    """One task of a bakeoff run, solved (or not) in one mode by one model."""

    __tablename__ = "bakeoff_trials"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    bakeoff_run_id: Mapped[str] = mapped_column(Text, default="")
    task_id: Mapped[str] = mapped_column(Text, default="")
    category: Mapped[str] = mapped_column(Text, default="")
    mode: Mapped[int] = mapped_column(SmallInteger, default=0)
    model: Mapped[str] = mapped_column(Text, default="")
    backend: Mapped[str] = mapped_column(Text, default="")
    success: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    json_valid: Mapped[bool] = mapped_column(Boolean, default=False)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    tokens_per_s: Mapped[float] = mapped_column(Float, default=0.0)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cached_tokens: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text, default="")
    time_us: Mapped[int] = mapped_column(BigInteger)
    run_id: Mapped[str] = mapped_column(Text, default="")
    # Calls made, replies received (errors got none), schema-valid replies.
    model_calls: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    replies: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    schema_valid_replies: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    first_attempt_success: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )
    # Why the trial was not run ("" = it ran); a skipped trial is no result.
    skipped: Mapped[str] = mapped_column(Text, default="", server_default="")
    # Latency (ms) of each call that got a reply, as a JSON list.
    call_latency_ms: Mapped[Any] = mapped_column(JsonDoc, nullable=True)
    model_identity: Mapped[str] = mapped_column(Text, default="", server_default="")
    # cargo clippy's verdict on the fix ("pass", "fail: ...", "not_run: ...").
    lint: Mapped[str] = mapped_column(Text, default="", server_default="")

    __table_args__ = (
        Index("ix_bakeoff_trials_bakeoff_run_id", "bakeoff_run_id"),
        Index("ix_bakeoff_trials_time_us", "time_us"),
    )


class AttemptRollupRow(Base):
    """Exact counters and latency/TTFT histograms of the PatchAttempt events
    of one hour, mode and model (see capsule/rollups.py); updated in the
    transaction that stores the events."""

    __tablename__ = "attempt_rollups"

    bucket_us: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    mode: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    model: Mapped[str] = mapped_column(Text, primary_key=True)
    attempts: Mapped[int] = mapped_column(BigInteger)
    successes: Mapped[int] = mapped_column(BigInteger)
    json_valid: Mapped[int] = mapped_column(BigInteger)
    # Attempts whose model call returned a reply (json_valid is judged over these).
    replies: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # mean tokens/s = sum / count over attempts that reported a non-zero rate.
    tokens_per_s_sum: Mapped[float] = mapped_column(Float)
    tokens_per_s_count: Mapped[int] = mapped_column(BigInteger)
    # Over attempts whose server reported cached tokens (cache_reported).
    cached_tokens: Mapped[int] = mapped_column(BigInteger)
    cached_prompt_tokens: Mapped[int] = mapped_column(BigInteger)
    cache_reported: Mapped[int] = mapped_column(BigInteger)
    # Log-bucketed histograms as {"<bin>": samples}: one row per key keeps a
    # batch's upsert to a handful of rows however widely its values spread.
    latency_bins: Mapped[Any] = mapped_column(JsonDoc, nullable=False)
    ttft_bins: Mapped[Any] = mapped_column(JsonDoc, nullable=False)
