"""PostgreSQL spellings of the query compiler (``jsonb`` columns, asyncpg ``$n`` parameters).

A JSON path is ``col #> '{a,b}'`` (``jsonb``, SQL NULL when missing) and its type is
``jsonb_typeof(...)``. Comparisons that involve a JSON path compare ``jsonb`` with
``jsonb`` (a literal travels as ``$n::jsonb``), so one expression index serves
equality, ``IN`` and ranges for strings and numbers alike::

    CREATE INDEX ON devices ((reported #> '{firmware,version}'));

The type test next to each comparison (``jsonb_typeof(...) = 'string'``) keeps the
query language's rule that values of different kinds never compare. Strings order by
the database collation: create the database with ``LC_COLLATE 'C'`` so that ranges
order by code point, as IoT Hub and the SQLite store do (plain columns are declared
``COLLATE "C"`` and need nothing). Arithmetic is ``float8``; division or modulo by zero
is undefined, as in the oracle.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from iot_flows._json import dumps

from ._dialect import SqlDialect
from ._sqlfrag import Frag, cat, param
from ._values import kind

if TYPE_CHECKING:
    from ._sqlexpr import Val

__all__ = ["POSTGRES", "PostgresDialect", "pg_path_literal"]

_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_INDEX_LIKE = re.compile(r"\s*[+-]?\d+\s*\Z")
_TYPES = {"number": "= 'number'", "text": "= 'string'", "bool": "= 'boolean'", "null": "= 'null'"}
_CASTS = {"text": "text", "number": "float8", "bool": "boolean"}


def pg_path_literal(segments: tuple[str, ...]) -> str:
    """``('a', 'b c')`` -> ``'{a,"b c"}'``: a ``text[]`` literal for ``#>``."""
    items = [s if _PLAIN.match(s) and s.lower() != "null" else '"' + s + '"' for s in segments]
    return "'{" + ",".join(items).replace("'", "''") + "}'"


def _number_placeholders(sql: str) -> str:
    """Rewrite ``?`` placeholders to ``$1, $2...``, leaving quoted text alone."""
    out: list[str] = []
    n = 0
    quote = ""
    for ch in sql:
        if quote:
            if ch == quote:
                quote = ""
        elif ch in ("'", '"'):
            quote = ch
        elif ch == "?":
            n += 1
            out.append(f"${n}")
            continue
        out.append(ch)
    return "".join(out)


class PostgresDialect(SqlDialect):
    """PostgreSQL 13+ over the ``jsonb`` schema of the PostgreSQL store."""

    name = "postgresql"
    true_sql, false_sql = "TRUE", "FALSE"
    const_sql = {True: "TRUE", False: "FALSE", None: "NULL"}
    constant_group_key = "NULL::int"  # a bare NULL is refused ("non-integer constant")
    # jsonb values of different types are never equal. Leaving the type test out matters
    # for plans: the planner has no statistics for ``jsonb_typeof(...) = 'string'`` and
    # would guess 0.5% of the rows match, then sort every match of an indexed value
    # instead of walking the primary key for the first page.
    equality_implies_kind = True

    def json_ref(self, column: str, json_path: tuple[str, ...]) -> tuple[Frag, Frag]:
        value = f"({column} #> {pg_path_literal(json_path)})" if json_path else column
        # '#>' indexes arrays with numeric keys; the query language only descends objects.
        guards = [
            f"jsonb_typeof({column} #> {pg_path_literal(json_path[:i])}) = 'object'"
            for i, seg in enumerate(json_path)
            if i > 0 and _INDEX_LIKE.match(seg)
        ]
        if guards:
            value = f"(CASE WHEN {' AND '.join(guards)} THEN {value} END)"
        return Frag(value), Frag(f"jsonb_typeof({value})")

    def type_test(self, kind: str) -> str:
        return _TYPES[kind]

    def section(self, section: str) -> Frag:
        return Frag(f"({section} || jsonb_build_object('$version', {section}_version))")

    def properties(self, desired: Frag, reported: Frag) -> Frag:
        return cat("jsonb_build_object('desired', ", desired, ", 'reported', ", reported, ")")

    def literal(self, value: Any) -> Frag:
        cast = _CASTS.get(kind(value))
        if cast is None:
            return param(value)
        return Frag(f"?::{cast}", (float(value) if cast == "float8" else value,))

    def _jsonb(self, v: Val) -> Frag:
        if v.kind == "lit":
            return Frag("?::jsonb", (dumps(v.lit),))
        if v.kind == "json":
            return v.sql
        return cat("to_jsonb(", v.sql, ")")

    def json_number(self, v: Val) -> Frag:
        return cat("CASE WHEN ", v.is_kind("number"), " THEN (", v.sql, ")::float8 END")

    def json_truth(self, v: Val) -> tuple[Frag, Frag, Frag]:
        return (
            cat(v.sql, " = 'true'::jsonb"),
            cat(v.sql, " = 'false'::jsonb"),
            cat("CASE WHEN ", v.typ, " = 'boolean' THEN (", v.sql, ")::boolean END"),
        )

    def arith(self, op: str, left: Frag, right: Frag) -> Frag:
        if op == "/":
            return cat("(CAST(", left, " AS float8) / NULLIF(", right, ", 0))")
        if op == "%":  # iot_fmod (created by the store's schema): C fmod, NULL for 0
            return cat("iot_fmod(", left, ", ", right, ")")
        return cat("(CAST(", left, f" AS float8) {op} ", right, ")")

    def operands(self, kind: str, a: Val, b: Val) -> tuple[Frag, Frag]:
        if "json" in (a.kind, b.kind):
            return self._jsonb(a), self._jsonb(b)
        return a.operand(), b.operand()

    def in_operands(self, a: Val, kind: str, values: list[Any]) -> tuple[Frag, Frag]:
        if a.kind != "json":
            return super().in_operands(a, kind, values)
        parts: list[Frag | str] = ["("]
        for i, item in enumerate(values):
            parts += [", " if i else "", Frag("?::jsonb", (dumps(item),))]
        parts.append(")")
        return a.sql, cat(*parts)

    def null_when_null(self, sql: Frag) -> Frag:
        return cat("NULLIF(", sql, " IS NULL, TRUE)")

    def json_projection(self, v: Val) -> tuple[str, str]:
        return f"({v.sql.sql})::text, {v.typ.sql}", "jsontext"

    def object_projection(self, sql: str) -> str:
        return f"({sql})::text"

    def json_group_keys(self, v: Val) -> list[str]:
        # The text form keeps 1 and 1.0 apart, as SQLite's GROUP BY does.
        return [v.typ.sql, f"({v.sql.sql})::text"]

    def finish(self, where_sql: str) -> str:
        return _number_placeholders(where_sql)


POSTGRES = PostgresDialect()
