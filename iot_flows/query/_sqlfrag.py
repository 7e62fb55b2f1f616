"""SQL fragments with positional parameters, and constant-folding combinators.

A :class:`Frag` is SQL text plus the values of its ``?`` placeholders in textual order,
so fragments can be concatenated (and the same fragment used twice) without
renumbering. User values only ever travel as parameters; the only user text inlined is
a JSON path, quoted by :func:`._paths.json_path_literal`.

Two families of combinators:

* ``all_of`` / ``any_of`` for *predicates* (``T``/``F`` forms, see ``_sqlexpr``), where
  SQL NULL and 0 both mean "not selected", so NULL constants fold to false.
* ``kleene_and`` / ``kleene_or`` / ``kleene_not`` for *three-valued* Boolean values
  (1/0/NULL), where NULL means undefined and must be preserved.

AND/OR chains are emitted as balanced trees because SQLite parses ``a AND b AND ...``
left-deep and rejects expressions deeper than 1000 levels.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FALSE",
    "NULL",
    "TRUE",
    "Frag",
    "all_of",
    "any_of",
    "case_when",
    "cat",
    "kleene_and",
    "kleene_not",
    "kleene_or",
    "param",
]

_NOT_CONST = object()


@dataclass(frozen=True)
class Frag:
    """SQL text, its parameters, and its value when it is a constant (1, 0 or NULL)."""

    sql: str
    params: tuple[Any, ...] = ()
    const: Any = _NOT_CONST

    @property
    def is_const(self) -> bool:
        """True for the literal fragments TRUE, FALSE and NULL."""
        return self.const is not _NOT_CONST


TRUE = Frag("1", (), True)
FALSE = Frag("0", (), False)
NULL = Frag("NULL", (), None)


def param(value: Any) -> Frag:
    """A ``?`` placeholder bound to ``value`` (a bool is bound as 1/0, as SQLite stores it)."""
    if isinstance(value, bool):
        value = int(value)
    return Frag("?", (value,))


def const(value: Any) -> Frag:
    """TRUE/FALSE/NULL for a Python True/False/other."""
    if value is True:
        return TRUE
    if value is False:
        return FALSE
    return NULL


#: How TRUE, FALSE and NULL are spelled inside larger fragments: SQLite's 1/0 by default,
#: PostgreSQL's boolean keywords while its compiler runs (see ``_dialect``).
CONST_SQL: ContextVar[dict[Any, str] | None] = ContextVar("CONST_SQL", default=None)


def cat(*parts: Frag | str) -> Frag:
    """Concatenate fragments and plain SQL text, keeping parameters in order."""
    sql: list[str] = []
    params: list[Any] = []
    spelled = CONST_SQL.get()
    for part in parts:
        if isinstance(part, str):
            sql.append(part)
        else:
            sql.append(spelled[part.const] if spelled is not None and part.is_const else part.sql)
            params.extend(part.params)
    return Frag("".join(sql), tuple(params))


def _balanced(items: list[Frag], op: str) -> Frag:
    if len(items) == 1:
        return items[0]
    mid = len(items) // 2
    return cat("(", _balanced(items[:mid], op), f" {op} ", _balanced(items[mid:], op), ")")


def all_of(items: list[Frag]) -> Frag:
    """Predicate AND: constants fold, NULL counts as false."""
    kept = []
    for item in items:
        if item.is_const:
            if item.const is not True:
                return FALSE
            continue
        kept.append(item)
    return _balanced(kept, "AND") if kept else TRUE


def any_of(items: list[Frag]) -> Frag:
    """Predicate OR: constants fold, NULL counts as false."""
    kept = []
    for item in items:
        if item.is_const:
            if item.const is True:
                return TRUE
            continue
        kept.append(item)
    return _balanced(kept, "OR") if kept else FALSE


def kleene_and(items: list[Frag]) -> Frag:
    """Three-valued AND over 1/0/NULL values (SQLite's AND is Kleene logic)."""
    if any(i.const is False for i in items):
        return FALSE
    kept = [i for i in items if i.const is not True]
    if not kept:
        return TRUE
    if all(i.is_const for i in kept):
        return NULL
    return _balanced(kept, "AND")


def kleene_or(items: list[Frag]) -> Frag:
    """Three-valued OR over 1/0/NULL values."""
    if any(i.const is True for i in items):
        return TRUE
    kept = [i for i in items if i.const is not False]
    if not kept:
        return FALSE
    if all(i.is_const for i in kept):
        return NULL
    return _balanced(kept, "OR")


def kleene_not(item: Frag) -> Frag:
    """Three-valued NOT (NULL stays NULL)."""
    if item.is_const:
        return const(None if item.const is None else not item.const)
    return cat("(NOT ", item, ")")


def case_when(cases: list[tuple[Frag, Frag]]) -> Frag:
    """``CASE WHEN c THEN r ... END`` (NULL when no case holds), folding constant conditions."""
    live: list[tuple[Frag, Frag]] = []
    for cond, result in cases:
        if cond.is_const and cond.const is not True:
            continue
        live.append((cond, result))
        if cond.const is True:
            break
    if not live:
        return NULL
    if live[0][0].const is True:
        return live[0][1]
    parts: list[Frag | str] = ["CASE"]
    for cond, result in live:
        parts += [" WHEN ", cond, " THEN ", result]
    parts.append(" END")
    return cat(*parts)
