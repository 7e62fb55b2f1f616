"""Compile a query to SQL pieces for the store, and decode raw result rows.

The store owns execution and paging; this module hands it a :class:`CompiledQuery`:

* ``where_sql`` + ``params``: the WHERE body (``'1'`` when there is none) over
  unqualified columns of ``table``; compound bodies are parenthesised, so it can be
  AND-ed with paging terms. Only the WHERE carries parameters; select and group-by
  text never does.
* ``select_sql`` / ``group_by_sql``: for ``raw`` results only (projections and
  aggregates), a select list and GROUP BY body; ``row_to_item`` turns each row into the
  JSON object Azure returns (undefined members omitted). ``columns`` lists the output
  names: an explicit alias, else a path's last segment as written, else ``$1``, ``$2``...
  for unnamed aggregates; GROUP BY paths that are not projected come last.
* ``item_type``: ``twin`` (``SELECT * FROM devices``), ``deviceJob``
  (``devices.jobs``) or ``raw``; ``top`` is the TOP n limit, applied by the store.

Paths are emitted as ``json_extract(<col>, '$.a.b')`` with bare keys where possible so
that an index on the identical expression serves WHERE (``=``, ``IN``, ranges). A JSON
path projection or group key uses two expressions, ``json_extract`` and ``json_type``:
the type separates JSON true from 1 and a string from an object's text. An index on
``(json_extract(c, p), json_type(c, p))`` serves WHERE and covers GROUP BY entirely;
a json_extract-only index does not help GROUP BY. Consequently GROUP BY keeps integer
and real numbers apart (``1`` and ``1.0`` form two groups).

Aggregates: ``COUNT()`` counts rows; ``SUM/AVG/MIN/MAX`` use only numeric values and
are omitted from the item when a group has none. SUM over integers is exact and, like
SQLite, fails on int64 overflow at execution time.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ._ast import Aggregate, Projection, Query
from ._dialect import SqlDialect, current, using
from ._parser import parse_condition, parse_query
from ._sqlexpr import Val, forms, numeric, value
from ._sqlfrag import Frag

__all__ = ["CompiledQuery", "compile_condition", "compile_parsed", "compile_query", "row_to_item"]

_TABLES = {"devices": "devices", "devices.jobs": "device_jobs"}


@dataclass(frozen=True)
class CompiledQuery:
    """SQL pieces of one query; see the module docstring for each field."""

    source: str
    table: str
    item_type: str
    where_sql: str
    params: tuple[Any, ...]
    select_sql: str | None
    group_by_sql: str | None
    columns: tuple[str, ...]
    top: int | None
    decoders: tuple[tuple[str, str], ...] = ()

    @property
    def sql(self) -> str:
        """A complete statement without LIMIT/ORDER BY (the store adds paging and TOP)."""
        text = f"SELECT {self.select_sql or '*'} FROM {self.table} WHERE {self.where_sql}"
        if self.group_by_sql:
            text += f" GROUP BY {self.group_by_sql}"
        return text


def _where(expr: Any) -> tuple[str, tuple[Any, ...]]:
    dialect = current()
    if expr is None:
        return dialect.true_sql, ()
    t = forms(expr)[0]
    if t.is_const:
        return (dialect.true_sql if t.const is True else dialect.false_sql), ()
    return dialect.finish(t.sql), t.params


def compile_condition(text: str, dialect: SqlDialect | None = None) -> tuple[str, tuple[Any, ...]]:
    """SQL WHERE body and parameters for a job ``queryCondition``; ``'*'`` gives ``('1', ())``.

    ``dialect`` defaults to SQLite; PostgreSQL's is ``iot_flows.query.POSTGRES``.
    """
    parsed = parse_condition(text)
    with using(dialect or current()):
        return _where(parsed)


def compile_query(text: str, dialect: SqlDialect | None = None) -> CompiledQuery:
    """Parse, check and compile ``text``; raises only QuerySyntaxError.

    Results are cached per (text, dialect): a :class:`CompiledQuery` is immutable, and
    parsing costs more than a first page of an indexed query.
    """
    return _compile_cached(text, dialect or current())


@lru_cache(maxsize=512)
def _compile_cached(text: str, dialect: SqlDialect) -> CompiledQuery:
    return compile_parsed(parse_query(text), dialect)


def compile_parsed(query: Query, dialect: SqlDialect | None = None) -> CompiledQuery:
    """Compile an already parsed and bound query (SQLite unless ``dialect`` says otherwise)."""
    with using(dialect or current()):
        return _compile_parsed(query)


def _compile_parsed(query: Query) -> CompiledQuery:
    where_sql, params = _where(query.where)
    table = _TABLES[query.source]
    if query.projections is None:
        item_type = "deviceJob" if query.source == "devices.jobs" else "twin"
        return CompiledQuery(query.source, table, item_type, where_sql, params, None, None, (), query.top)
    outputs = query.projections + query.extra_group_outputs
    select: list[str] = []
    decoders: list[tuple[str, str]] = []
    for proj in outputs:
        sql, decoder = _projection_sql(proj)
        select.append(sql)
        decoders.append((proj.alias, decoder))
    group_by = None
    if query.group_by:
        keys: list[str] = []
        for path in query.group_by:
            keys.extend(_group_keys(value(path)))
        group_by = ", ".join(dict.fromkeys(keys)) or current().constant_group_key
    return CompiledQuery(
        query.source,
        table,
        "raw",
        where_sql,
        params,
        ", ".join(select),
        group_by,
        tuple(p.alias for p in outputs),
        query.top,
        tuple(decoders),
    )


def _plain(frag: Frag) -> str:
    if frag.params:  # pragma: no cover - paths and aggregates never carry parameters
        raise AssertionError("select list fragment with parameters")
    return frag.sql


def _projection_sql(proj: Projection) -> tuple[str, str]:
    expr = proj.expr
    if isinstance(expr, Aggregate):
        if expr.func == "COUNT":
            return "COUNT(*)", "plain"
        assert expr.arg is not None
        num = numeric(value(expr.arg))
        if num.kind == "lit":
            return "NULL", "plain"
        return f"{expr.func}({_plain(num.sql)})", "plain"
    return _value_sql(value(expr))


def _value_sql(v: Val) -> tuple[str, str]:
    if v.kind == "json":
        return current().json_projection(v)
    if v.kind == "object":
        return current().object_projection(_plain(v.sql)), "json"
    if v.kind == "lit":
        return "NULL", "plain"
    return _plain(v.sql), "plain"


def _group_keys(v: Val) -> list[str]:
    if v.kind == "json":
        return current().json_group_keys(v)
    if v.kind == "lit":
        return []
    return [_plain(v.sql)]


def _decode_typed(raw: Any, json_type: str | None) -> Any:
    if json_type in ("object", "array"):
        return json.loads(raw)
    if json_type == "true":
        return True
    if json_type == "false":
        return False
    return raw


def row_to_item(compiled: CompiledQuery, row: Sequence[Any]) -> dict[str, Any]:
    """Turn one row of ``compiled.select_sql`` into the JSON object of a ``raw`` result.

    Undefined values (SQL NULL for plain columns, a NULL ``json_type``) are omitted.
    """
    if compiled.item_type != "raw":
        raise ValueError(f"row_to_item decodes raw rows, not {compiled.item_type!r} items")
    item: dict[str, Any] = {}
    i = 0
    for alias, decoder in compiled.decoders:
        if decoder == "jsontext":  # PostgreSQL: (JSON text, jsonb_typeof)
            raw, json_type = row[i], row[i + 1]
            i += 2
            if json_type is not None:
                item[alias] = json.loads(raw)
            continue
        if decoder == "typed":
            raw, json_type = row[i], row[i + 1]
            i += 2
            if json_type is not None:
                item[alias] = None if json_type == "null" else _decode_typed(raw, json_type)
            continue
        raw = row[i]
        i += 1
        if raw is not None:
            item[alias] = json.loads(raw) if decoder == "json" else raw
    return item
