"""SQL dialects of the query compiler: what differs between SQLite and PostgreSQL.

The compiler (:mod:`._sqlexpr`, :mod:`._compile`) is one piece of logic; the handful
of spellings that differ between engines are methods of a :class:`SqlDialect`. The
base class spells SQLite (``json_extract``/``json_type``, 1/0 booleans); the
PostgreSQL subclass lives in :mod:`._pgdialect`. :func:`using` selects the dialect for
the duration of one compilation (a context variable, so concurrent compilations in
other threads or tasks are unaffected).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from ._paths import json_path_literal
from ._sqlfrag import CONST_SQL, Frag, cat, param

if TYPE_CHECKING:
    from ._sqlexpr import Val

__all__ = ["SqlDialect", "current", "using"]

_ARITH_SQL = {"+": "({} + {})", "-": "({} - {})", "*": "({} * {})", "/": "(CAST({} AS REAL) / {})", "%": "mod({}, {})"}
_JSON_TYPES = {
    "number": "IN ('integer','real')",
    "text": "= 'text'",
    "bool": "IN ('true','false')",
    "null": "= 'null'",
}


class SqlDialect:
    """SQLite spellings (the store's embedded default)."""

    name = "sqlite"
    true_sql, false_sql = "1", "0"
    #: How constants are spelled inside fragments; None keeps ``Frag.sql`` (1/0/NULL).
    const_sql: dict[Any, str] | None = None
    #: GROUP BY body when every key is a literal (one group, none for no rows).
    constant_group_key = "NULL"
    #: True when ``json_value = literal`` (and ``IN``) can only hold for a value of the
    #: literal's kind, so the type test beside it is redundant in the ``T`` form. SQLite:
    #: no (``json_extract`` gives an object's text, which may equal a string literal).
    equality_implies_kind = False

    def json_ref(self, column: str, json_path: tuple[str, ...]) -> tuple[Frag, Frag]:
        """(value, type) fragments of a JSON path inside a column."""
        path = json_path_literal(json_path)
        return Frag(f"json_extract({column}, {path})"), Frag(f"json_type({column}, {path})")

    def type_test(self, kind: str) -> str:
        """Suffix testing a JSON type fragment for a query kind (``number``, ``text``...)."""
        return _JSON_TYPES[kind]

    def section(self, section: str) -> Frag:
        """A twin section with its ``$version``, as a JSON object value."""
        return Frag(f"json_set({section}, '$.\"$version\"', {section}_version)")

    def properties(self, desired: Frag, reported: Frag) -> Frag:
        """The ``properties`` object."""
        return cat("json_object('desired', json(", desired, "), 'reported', json(", reported, "))")

    def literal(self, value: Any) -> Frag:
        """A literal operand."""
        return param(value)

    def json_number(self, v: Val) -> Frag:
        """A JSON value as a number when it is one, else NULL."""
        return cat("CASE WHEN ", v.is_kind("number"), " THEN ", v.sql, " END")

    def json_truth(self, v: Val) -> tuple[Frag, Frag, Frag]:
        """(T, F, B) forms of a JSON value used as a condition."""
        return (
            cat(v.typ, " = 'true'"),
            cat(v.typ, " = 'false'"),
            cat("CASE ", v.typ, " WHEN 'true' THEN 1 WHEN 'false' THEN 0 END"),
        )

    def arith(self, op: str, left: Frag, right: Frag) -> Frag:
        """``left op right`` for numbers (NULL when undefined, e.g. division by zero)."""
        sql = _ARITH_SQL[op].split("{}")
        return cat(sql[0], left, sql[1], right, sql[2])

    def operands(self, kind: str, a: Val, b: Val) -> tuple[Frag, Frag]:
        """Both sides of a comparison known to be of ``kind``."""
        return a.operand(), b.operand()

    def in_operands(self, a: Val, kind: str, values: list[Any]) -> tuple[Frag, Frag]:
        """The left side and the parenthesised list of ``a IN (...)``."""
        parts: list[Frag | str] = ["("]
        for i, item in enumerate(values):
            parts += [", " if i else "", self.literal(item)]
        parts.append(")")
        return a.operand(), cat(*parts)

    def null_when_null(self, sql: Frag) -> Frag:
        """False when ``sql`` is defined, NULL when it is not."""
        return cat("NULLIF(", sql, " IS NULL, 1)")

    # ---- select list (``_compile``) ---------------------------------------------------
    def json_projection(self, v: Val) -> tuple[str, str]:
        """Select text and decoder of a JSON path projection."""
        return f"{v.sql.sql}, {v.typ.sql}", "typed"

    def object_projection(self, sql: str) -> str:
        """SQL turning a JSON object expression into its text (identity on SQLite)."""
        return sql

    def json_group_keys(self, v: Val) -> list[str]:
        """The ``GROUP BY`` terms for a JSON value: its type, then its value."""
        # Type first: SQLite matches GROUP BY terms to an index in any order, so an index
        # on (json_extract, json_type) still covers this; a json_extract-only index cannot,
        # and type-first stops the planner from walking it row by row (slower than a scan).
        return [v.typ.sql, v.sql.sql]

    def finish(self, where_sql: str) -> str:
        """Final touch on a WHERE body (placeholder style)."""
        return where_sql


SQLITE = SqlDialect()
_CURRENT: ContextVar[SqlDialect] = ContextVar("_CURRENT", default=SQLITE)


def current() -> SqlDialect:
    """The dialect of the compilation in progress (SQLite outside :func:`using`)."""
    return _CURRENT.get()


@contextmanager
def using(dialect: SqlDialect) -> Iterator[SqlDialect]:
    """Compile with ``dialect`` inside the block."""
    token = _CURRENT.set(dialect)
    const_token = CONST_SQL.set(dialect.const_sql)
    try:
        yield dialect
    finally:
        CONST_SQL.reset(const_token)
        _CURRENT.reset(token)
