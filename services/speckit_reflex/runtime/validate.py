"""Checks for hostile RPC input, shared by every servicer.

Every field of a request is hostile until checked. `check_message` walks the
fields a request actually carries (ListFields, so an unset field costs
nothing) and applies, from the proto descriptors, what holds for every field
of its kind, plus the limits a service declares per field path:

- text: no NUL byte (PostgreSQL refuses it in text and in JSONB), at most
  `TEXT_MAX` characters unless a `Text` rule says otherwise;
- enums: a value the enum defines (proto3 enums accept any int on the wire);
- doubles: finite (NaN and infinities break statistics and JSON), and a
  `Range` when declared;
- integers: a `Range` when declared; unsigned 32-bit values also stay within
  the database's signed INTEGER (2**31 - 1) unless declared otherwise;
- Timestamps: within protobuf's valid range (years 1 to 9999), so a stored
  time converts back when read;
- Structs: JSON-representable (finite numbers, bounded depth, no NUL);
- repeated fields: at most `ITEMS_MAX` items unless an `Items` rule says.

A refusal is `InvalidArgument` with reason INVALID_FIELD whose ErrorInfo
metadata `field` is the field's path (`messages[3].content`), so a caller
knows what to fix without reading the message (which starts with the path
too, for humans). The small
checkers (`text`, `number`, ...) serve the hand-written checks of hot paths
that cannot afford the walk.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sized
from dataclasses import dataclass

from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from speckit_reflex.errors import InvalidArgument

NUL = "\x00"
# Default bound of a text field without its own rule: names, ids, reasons.
TEXT_MAX = 1024
# Default bound of a repeated field without its own rule.
ITEMS_MAX = 1000
# Default bound of an unsigned 32-bit field: PostgreSQL's INTEGER is signed.
INT32_MAX = 2**31 - 1
# Nesting bound of a Struct (and of any JSON document accepted).
JSON_DEPTH_MAX = 32
# protobuf's Timestamp range: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z.
TIME_MIN_S = -62_135_596_800
TIME_MAX_S = 253_402_300_799

_T = FieldDescriptor
_UINT32 = (_T.TYPE_UINT32, _T.TYPE_FIXED32)


@dataclass(frozen=True)
class Text:
    """A text field: at most `max_len` characters; `required` refuses ""."""

    max_len: int = TEXT_MAX
    required: bool = False
    #: allowed values ("" always allowed unless required); empty = any
    choices: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Range:
    """A number field within [lo, hi]."""

    lo: float
    hi: float


@dataclass(frozen=True)
class Items:
    """A repeated field with at most `max_items` items; `required` refuses none."""

    max_items: int
    required: bool = False


@dataclass(frozen=True)
class Known:
    """An enum field; `required` refuses the zero value (XXX_UNSPECIFIED)."""

    required: bool = False


Rule = Text | Range | Items | Known
Rules = Mapping[str, Rule]


def refuse(field: str, why: str) -> InvalidArgument:
    """The error for a bad field: its path in metadata (and first in the message)."""
    return InvalidArgument(f"{field}: {why}", field=field)


def text(value: str, field: str, max_len: int = TEXT_MAX, *, required: bool = False) -> str:
    """`value` if it is storable text of at most `max_len` characters."""
    if required and not value.strip():
        raise refuse(field, "is required")
    if len(value) > max_len:
        raise refuse(field, f"is {len(value)} characters long; the limit is {max_len}")
    if NUL in value:
        raise refuse(field, "contains a NUL byte")
    return value


def number(value: float, field: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    """`value` if it is finite and within [lo, hi]."""
    if not math.isfinite(value):
        raise refuse(field, f"must be a finite number (got {value})")
    if not lo <= value <= hi:
        raise refuse(field, f"must be between {_fmt(lo)} and {_fmt(hi)} (got {_fmt(value)})")
    return value


def items(values: Sized, field: str, max_items: int, *, required: bool = False) -> None:
    """Refuse a list longer than `max_items` (or empty, when required)."""
    if required and not len(values):
        raise refuse(field, "needs at least one item")
    if len(values) > max_items:
        raise refuse(field, f"has {len(values)} items; the limit is {max_items}")


def timestamp_us(ts: timestamp_pb2.Timestamp, field: str) -> int:
    """Microseconds since the epoch of a Timestamp within protobuf's range."""
    if not TIME_MIN_S <= ts.seconds <= TIME_MAX_S or not 0 <= ts.nanos <= 999_999_999:
        raise refuse(
            field, "is outside the valid Timestamp range (years 1 to 9999, nanos 0..999999999)"
        )
    return ts.seconds * 1_000_000 + ts.nanos // 1000


def json_value(value: struct_pb2.Value | struct_pb2.Struct, field: str, depth: int = 0) -> None:
    """Refuse a Struct or Value with no storable JSON form."""
    if depth > JSON_DEPTH_MAX:
        raise refuse(field, f"is nested deeper than {JSON_DEPTH_MAX} levels")
    if isinstance(value, struct_pb2.Struct):
        for key, v in value.fields.items():
            if NUL in key:
                raise refuse(field, "has a key containing a NUL byte")
            json_value(v, f"{field}.{key}", depth + 1)
        return
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        if NUL in value.string_value:
            raise refuse(field, "contains a NUL byte")
    elif kind == "number_value":
        if not math.isfinite(value.number_value):
            raise refuse(field, f"must be a finite number (got {value.number_value})")
    elif kind == "struct_value":
        json_value(value.struct_value, field, depth + 1)
    elif kind == "list_value":
        for i, v in enumerate(value.list_value.values):
            json_value(v, f"{field}[{i}]", depth + 1)
    elif kind is None:
        raise refuse(field, "has a value with no kind set")


def check_message(msg: Message, rules: Rules | None = None, prefix: str = "") -> None:
    """Check every set field of `msg` (recursively) by its kind and `rules`.

    `rules` maps a field path without indices ("messages.content") to its
    rule; paths are relative to `msg`.
    """
    _check(msg, rules or {}, prefix, "")


def _check(msg: Message, rules: Rules, prefix: str, rule_prefix: str) -> None:
    if isinstance(msg, timestamp_pb2.Timestamp):
        timestamp_us(msg, prefix.rstrip("."))
        return
    if isinstance(msg, struct_pb2.Struct):
        json_value(msg, prefix.rstrip("."))
        return
    for fd, value in msg.ListFields():
        path = prefix + fd.name
        key = rule_prefix + fd.name
        rule = rules.get(key)
        if fd.is_repeated:
            limit = rule if isinstance(rule, Items) else Items(ITEMS_MAX)
            items(value, path, limit.max_items)
            element_rule = None if isinstance(rule, Items) else rule
            for i, v in enumerate(value):
                _check_one(fd, v, f"{path}[{i}]", key, element_rule, rules)
        else:
            _check_one(fd, value, path, key, rule, rules)
    _check_required(msg, rules, prefix, rule_prefix)


def _check_one(
    fd: FieldDescriptor, value: object, path: str, key: str, rule: Rule | None, rules: Rules
) -> None:
    # protobuf hands each kind of field over as one Python type: messages,
    # str (string), bytes, float (double, float), bool, int (integers, enums).
    if isinstance(value, Message):
        _check(value, rules, path + ".", key + ".")
    elif isinstance(value, str):
        r = rule if isinstance(rule, Text) else Text()
        text(value, path, r.max_len)
        if r.choices and value and value not in r.choices:
            raise refuse(path, f"must be one of {', '.join(sorted(r.choices))} (got {value!r})")
    elif isinstance(value, bytes):
        r = rule if isinstance(rule, Text) else Text()
        if len(value) > r.max_len:
            raise refuse(path, f"is {len(value)} bytes long; the limit is {r.max_len}")
    elif isinstance(value, float):
        rng = rule if isinstance(rule, Range) else Range(-math.inf, math.inf)
        number(value, path, rng.lo, rng.hi)
    elif isinstance(value, bool):
        return
    elif isinstance(value, int):
        t = fd.type
        if t == _T.TYPE_ENUM:
            enum = fd.enum_type
            if enum is not None and value not in enum.values_by_number:
                raise refuse(path, f"{value} is not a known {enum.name}")
            return
        limit = rule if isinstance(rule, Range) else (Range(0, INT32_MAX) if t in _UINT32 else None)
        if limit is not None and not limit.lo <= value <= limit.hi:
            raise refuse(
                path, f"must be between {_fmt(limit.lo)} and {_fmt(limit.hi)} (got {value})"
            )


def _check_required(msg: Message, rules: Rules, prefix: str, rule_prefix: str) -> None:
    """Rules that refuse a missing value (ListFields never lists those)."""
    for fd in msg.DESCRIPTOR.fields:
        rule = rules.get(rule_prefix + fd.name)
        if rule is None or not getattr(rule, "required", False):
            continue
        value = getattr(msg, fd.name)
        path = prefix + fd.name
        if fd.is_repeated:
            items(
                value, path, rule.max_items if isinstance(rule, Items) else ITEMS_MAX, required=True
            )
        elif fd.type == _T.TYPE_STRING:
            if not value.strip():
                raise refuse(path, "is required")
        elif fd.type == _T.TYPE_ENUM and value == 0:
            zero = fd.enum_type.values_by_number[0].name if fd.enum_type else "0"
            raise refuse(path, f"is required ({zero} is not allowed)")


def _fmt(x: float) -> str:
    return str(int(x)) if math.isfinite(x) and float(x).is_integer() else str(x)
