"""JSON-schema handling: refuse pathological schemas, judge model replies.

A schema is checked before any model sees it, because constrained decoding
compiles it into a grammar and a "grammar bomb" (a huge enum, deep nesting,
a remote or broken $ref) can stall a model server for every caller. Replies
are judged locally whatever the server promised: only a document that is the
whole reply, complete (not cut by max_tokens) and valid under the schema is
accepted.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for
from referencing.exceptions import Unresolvable

from speckit_reflex.errors import InvalidArgument


def _refuse(message: str) -> InvalidArgument:
    """A request schema refused: INVALID_FIELD naming `json_schema` in metadata."""
    return InvalidArgument(message, field="json_schema")


@dataclass(frozen=True)
class SchemaLimits:
    """Bounds on a request's JSON schema (all generous for real patch schemas)."""

    max_bytes: int = 64 * 1024
    max_depth: int = 24
    max_nodes: int = 4000
    max_enum_items: int = 512
    max_pattern_chars: int = 512


class SchemaCheck:
    """Pre-checks request schemas and caches their compiled validators."""

    def __init__(self, limits: SchemaLimits | None = None, cache_size: int = 256):
        self.limits = limits or SchemaLimits()
        self._cache: OrderedDict[str, tuple[dict[str, Any], Any]] = OrderedDict()
        self._cache_size = cache_size

    def compile(self, schema_text: str) -> tuple[dict[str, Any], Any]:
        """(schema, validator) for a schema given as JSON text.

        Raises InvalidArgument (field json_schema) naming the first limit or rule it breaks.
        """
        hit = self._cache.get(schema_text)
        if hit is not None:
            self._cache.move_to_end(schema_text)
            return hit
        lim = self.limits
        if len(schema_text.encode()) > lim.max_bytes:
            raise _refuse(f"json_schema is larger than {lim.max_bytes} bytes")
        try:
            schema = json.loads(schema_text)
        except ValueError as exc:
            raise _refuse(f"json_schema is not valid JSON: {exc}") from None
        if not isinstance(schema, dict):
            raise _refuse("json_schema must be a JSON object")
        self._check_shape(schema)
        cls = validator_for(schema, default=Draft202012Validator)
        try:
            cls.check_schema(schema)
        except SchemaError as exc:
            raise _refuse(f"json_schema is not a valid JSON Schema: {exc.message}") from None
        validator = cls(schema)
        self._check_refs(schema, validator)
        entry = (schema, validator)
        self._cache[schema_text] = entry
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return entry

    def _check_shape(self, schema: dict[str, Any]) -> None:
        """Depth, node count, enum sizes and patterns, iteratively (no recursion limit)."""
        lim = self.limits
        nodes = 0
        stack: list[tuple[Any, int]] = [(schema, 1)]
        while stack:
            node, depth = stack.pop()
            nodes += 1
            if nodes > lim.max_nodes:
                raise _refuse(f"json_schema has more than {lim.max_nodes} nodes")
            if depth > lim.max_depth:
                raise _refuse(f"json_schema is nested deeper than {lim.max_depth}")
            if isinstance(node, dict):
                enum = node.get("enum")
                if isinstance(enum, list) and len(enum) > lim.max_enum_items:
                    raise _refuse(
                        f"json_schema has an enum of {len(enum)} items (limit {lim.max_enum_items})"
                    )
                pattern = node.get("pattern")
                if isinstance(pattern, str) and len(pattern) > lim.max_pattern_chars:
                    raise _refuse(
                        f"json_schema has a pattern longer than {lim.max_pattern_chars} characters"
                    )
                ref = node.get("$ref")
                if isinstance(ref, str) and not ref.startswith("#"):
                    raise _refuse(f"json_schema $ref {ref!r} is not local (only '#...' references)")
                stack.extend((v, depth + 1) for v in node.values())
            elif isinstance(node, list):
                stack.extend((v, depth + 1) for v in node)

    @staticmethod
    def _check_refs(schema: dict[str, Any], validator: Any) -> None:
        refs: list[str] = []
        stack: list[Any] = [schema]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                if isinstance(node.get("$ref"), str):
                    refs.append(node["$ref"])
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)
        resolver = validator._resolver  # the referencing registry of this validator
        for ref in refs:
            try:
                resolver.lookup(ref)
            except Unresolvable:
                raise _refuse(f"json_schema $ref {ref!r} does not resolve") from None


@dataclass(frozen=True)
class ReplyCheck:
    """The local judgement of one reply against the schema."""

    valid: bool
    #: short code: "", "truncated", "empty", "json_only_in_reasoning",
    #: "not_json", "schema_mismatch"
    kind: str = ""
    detail: str = ""

    @property
    def error(self) -> str:
        return f"{self.kind}: {self.detail}" if self.detail else self.kind


def judge_reply(content: str, reasoning: str, finish_reason: str, validator: Any) -> ReplyCheck:
    """Is `content` one complete JSON document valid under the schema?

    Fences, prose around the JSON, a reply cut by max_tokens, or JSON that
    appears only in the reasoning channel are all failures.
    """
    if finish_reason == "length":
        return ReplyCheck(False, "truncated", "finish_reason is length (cut by max_tokens)")
    text = content.strip()
    if not text:
        if reasoning.strip():
            return ReplyCheck(
                False, "json_only_in_reasoning", "content is empty; only reasoning was returned"
            )
        return ReplyCheck(False, "empty", "the reply is empty")
    try:
        doc = json.loads(text)
    except ValueError as exc:
        hint = "markdown fence" if text.startswith("```") else "prose or broken JSON"
        return ReplyCheck(False, "not_json", f"{hint}: {exc}")
    error = next(iter(validator.iter_errors(doc)), None)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return ReplyCheck(False, "schema_mismatch", f"at {where}: {error.message[:200]}")
    return ReplyCheck(True)
