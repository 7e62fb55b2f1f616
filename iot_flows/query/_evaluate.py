"""Pure-Python evaluator of the query language: the test oracle for the SQL compiler.

It runs a bound query over REST-shaped documents (device twins as in reference section
1.1, device-job records as in section 3.6) with the semantics of :mod:`._values` and the
field table of :mod:`._paths`, i.e. independently of SQLite. The property tests check
that the SQL compiler selects and groups exactly as this module does; it is also handy
for filtering documents already in memory.

Result items: ``twin`` / ``deviceJob`` queries return the matching documents
themselves; projections and aggregates return dicts without undefined members. GROUP BY
keys follow the SQL compiler (JSON type and value, so ``1``, ``1.0`` and ``true`` are
three groups); groups come out in first-seen order, SQL may order them differently.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from ._ast import UNDEFINED, Aggregate, And, Arith, Compare, In, IsDefined, Literal, Neg, Not, Or, Path, Query
from ._parser import parse_condition, parse_query
from ._paths import lookup
from ._values import arith, compare, kind, logical_and, logical_not, logical_or, member, negate

__all__ = ["evaluate", "evaluate_condition", "run_query"]


def evaluate(node: Any, doc: dict[str, Any]) -> Any:
    """The value of a bound expression for one document (UNDEFINED when absent)."""
    if isinstance(node, Literal):
        return node.value
    if isinstance(node, Path):
        assert node.ref is not None, "unbound path"
        return lookup(node.ref, doc)
    if isinstance(node, Compare):
        return compare(node.op, evaluate(node.left, doc), evaluate(node.right, doc))
    if isinstance(node, And):
        return logical_and([evaluate(i, doc) for i in node.items])
    if isinstance(node, Or):
        return logical_or([evaluate(i, doc) for i in node.items])
    if isinstance(node, Not):
        return logical_not(evaluate(node.operand, doc))
    if isinstance(node, In):
        return member(evaluate(node.left, doc), node.items, node.negated)
    if isinstance(node, IsDefined):
        return evaluate(node.path, doc) is not UNDEFINED
    if isinstance(node, Arith):
        return arith(node.op, evaluate(node.left, doc), evaluate(node.right, doc))
    if isinstance(node, Neg):
        return negate(node.sign, evaluate(node.operand, doc))
    raise TypeError(f"not an expression: {node!r}")


def evaluate_condition(condition: Any, twin: dict[str, Any]) -> bool:
    """True when ``condition`` selects ``twin``.

    ``condition`` is a WHERE body / job ``queryCondition`` text (``*`` selects all), a
    bound expression, or a parsed :class:`Query` (its WHERE clause is used).
    """
    if isinstance(condition, str):
        condition = parse_condition(condition)
    elif isinstance(condition, Query):
        condition = condition.where
    return condition is None or evaluate(condition, twin) is True


def group_key(value: Any) -> tuple[Any, ...]:
    """A hashable GROUP BY key matching SQL's ``(json_extract, json_type)`` pair."""
    k = kind(value)
    if k in ("undefined", "null"):
        return (k,)
    if k == "bool":
        return ("true",) if value else ("false",)
    if k == "number":
        return ("real" if isinstance(value, float) else "integer", value)
    if k == "text":
        return (k, value)
    return (k, json.dumps(value, separators=(",", ":")))


def _aggregate(agg: Aggregate, rows: list[dict[str, Any]]) -> Any:
    if agg.func == "COUNT":
        return len(rows)
    assert agg.arg is not None
    nums = [v for v in (evaluate(agg.arg, r) for r in rows) if kind(v) == "number"]
    if not nums:
        return UNDEFINED
    if agg.func == "MIN":
        return min(nums)
    if agg.func == "MAX":
        return max(nums)
    exact = all(isinstance(v, int) for v in nums)
    total: Any = 0 if exact else 0.0
    for v in nums:  # SQLite 3.40 sums doubles naively in row order
        total += v if exact else float(v)
    if agg.func == "SUM":
        return total
    return float(total) / len(nums)


def _groups(query: Query, rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    if not query.group_by:
        return [rows]
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        key = tuple(group_key(evaluate(path, row)) for path in query.group_by)
        groups.setdefault(key, []).append(row)
    return list(groups.values())


def run_query(query: Any, docs: Iterable[dict[str, Any]]) -> list[Any]:
    """Run a query (text or parsed :class:`Query`) over documents; TOP is applied."""
    if not isinstance(query, Query):
        query = parse_query(query)
    rows = [d for d in docs if query.where is None or evaluate(query.where, d) is True]
    items: list[Any]
    if query.projections is None:
        items = rows
    elif not query.is_aggregate:
        items = []
        for row in rows:
            values = ((p.alias, evaluate(p.expr, row)) for p in query.projections)
            items.append({alias: v for alias, v in values if v is not UNDEFINED})
    else:
        items = []
        for group in _groups(query, rows):
            item: dict[str, Any] = {}
            for proj in query.projections + query.extra_group_outputs:
                if isinstance(proj.expr, Aggregate):
                    v = _aggregate(proj.expr, group)
                else:
                    v = evaluate(proj.expr, group[0]) if group else UNDEFINED
                if v is not UNDEFINED:
                    item[proj.alias] = v
            items.append(item)
    return items if query.top is None else items[: query.top]
