"""Check a parsed query against the rules the grammar cannot express, and bind its paths.

Rules enforced here (each a positioned QuerySyntaxError):

* ``FROM`` is ``devices`` or ``devices.jobs`` (``devices.modules`` has no store here).
* ``devices.jobs``: ``SELECT *`` only, no aggregates or GROUP BY, only
  ``devices.jobs.<field>`` paths (reference section 4.5).
* Aggregates only in the select list; IS_DEFINED not in the select list.
* With aggregates or GROUP BY, a plain projected path must be one of the GROUP BY paths;
  ``SELECT *`` cannot be grouped.
* Output names are unique. Defaults: a path's last segment as written; unnamed
  aggregates are ``$1``, ``$2``... in order (the Cosmos DB convention). A GROUP BY path
  that is not projected is still reported, under its last segment, unless that name
  is taken.
* Expressions nest at most :data:`MAX_DEPTH` levels (AND/OR chains count once), which
  keeps recursion in both back ends and SQLite's expression depth (1000) far away.

Binding attaches a :class:`~._ast.Ref` to every :class:`~._ast.Path` (see ``_paths``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ._ast import Aggregate, And, Arith, Compare, In, IsDefined, Neg, Not, Or, Path, Projection, Query, children
from ._grammar import Problem
from ._paths import resolve

__all__ = ["MAX_DEPTH", "bind_condition", "bind_query"]

MAX_DEPTH = 100


def bind_query(raw: dict[str, Any]) -> Query:
    """Turn the parser's clause dict into a checked, bound :class:`Query`."""
    source = _source(raw["source"])
    projections_raw, star_pos = raw["select"]
    where = bind_condition(raw["where"][0], source) if raw["where"] else None
    top = raw["top"][0] if raw["top"] else None
    group_paths: tuple[Path, ...] = ()
    group_pos = 0
    if raw["group"]:
        group_paths, group_pos = raw["group"]
    if source == "devices.jobs":
        if projections_raw is not None:
            exprs = [expr for expr, _ in projections_raw]
            aggregate = next((e for e in exprs if isinstance(e, Aggregate)), None)
            culprit, what = (aggregate, "aggregates are") if aggregate else (exprs[0], "projections are")
            raise Problem(culprit.pos, f"{what} not supported on devices.jobs (use SELECT *)")
        if group_paths:
            raise Problem(group_pos, "GROUP BY is not supported on devices.jobs")
        return Query(source, top, None, where, ())
    groups = tuple(_bind_path(p, source) for p in group_paths)
    if projections_raw is None:
        if groups:
            raise Problem(group_pos, "SELECT * cannot be combined with GROUP BY")
        return Query(source, top, None, where, ())
    projections = _projections(projections_raw, source, groups)
    query = Query(source, top, projections, where, groups)
    if query.is_aggregate:
        keys = {_key(g) for g in groups}
        for proj in projections:
            if isinstance(proj.expr, Path) and _key(proj.expr) not in keys:
                raise Problem(proj.pos, f"{'.'.join(proj.expr.segments)!r} must appear in GROUP BY")
        extra = _extra_group_outputs(projections, groups)
        query = dataclasses.replace(query, extra_group_outputs=extra)
    return query


def bind_condition(expr: Any, source: str = "devices") -> Any:
    """Check nesting depth, reject misplaced aggregates and bind paths of a condition."""
    stack = [(expr, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise Problem(node.pos, f"expression is nested more than {MAX_DEPTH} levels deep")
        if isinstance(node, Aggregate):
            raise Problem(node.pos, f"aggregate {node.func}() is only allowed in the select list")
        stack.extend((child, depth + 1) for child in children(node))
    return _bind_expr(expr, source)


def _source(path: Path) -> str:
    name = ".".join(path.segments).lower()
    if name in ("devices", "devices.jobs"):
        return name
    if name == "devices.modules":
        raise Problem(path.pos, "FROM devices.modules is not supported by this hub")
    raise Problem(path.pos, f"unknown collection {'.'.join(path.segments)!r} (use devices or devices.jobs)")


def _bind_path(path: Path, source: str) -> Path:
    ref = resolve(path.segments, source)
    if ref is None:
        raise Problem(path.pos, "devices.jobs queries can only use devices.jobs.<field> properties")
    return dataclasses.replace(path, ref=ref)


def _bind_expr(node: Any, source: str) -> Any:
    if isinstance(node, Path):
        return _bind_path(node, source)
    if isinstance(node, (And, Or)):
        return dataclasses.replace(node, items=tuple(_bind_expr(i, source) for i in node.items))
    if isinstance(node, (Arith, Compare)):
        return dataclasses.replace(node, left=_bind_expr(node.left, source), right=_bind_expr(node.right, source))
    if isinstance(node, (Neg, Not)):
        return dataclasses.replace(node, operand=_bind_expr(node.operand, source))
    if isinstance(node, In):
        return dataclasses.replace(node, left=_bind_expr(node.left, source))
    if isinstance(node, IsDefined):
        return dataclasses.replace(node, path=_bind_path(node.path, source))
    return node


def _key(path: Path) -> Any:
    """Identity of a bound path for GROUP BY matching (undefined paths by spelling)."""
    return path.segments if path.ref is None or path.ref.kind == "undefined" else path.ref


def _projections(raw: tuple[Any, ...], source: str, groups: tuple[Path, ...]) -> tuple[Projection, ...]:
    out: list[Projection] = []
    seen: set[str] = set()
    unnamed = 0
    for expr, alias in raw:
        if isinstance(expr, IsDefined):
            raise Problem(expr.pos, "projections must be property paths or aggregates")
        if isinstance(expr, Aggregate):
            arg = _bind_path(expr.arg, source) if expr.arg is not None else None
            expr = dataclasses.replace(expr, arg=arg)
            if alias is None:
                unnamed += 1
                alias = f"${unnamed}"
        else:
            expr = _bind_path(expr, source)
            if alias is None:
                alias = expr.segments[-1]
        if alias in seen:
            raise Problem(expr.pos, f"duplicate output name {alias!r} (use AS to rename)")
        seen.add(alias)
        out.append(Projection(expr, alias, expr.pos))
    return tuple(out)


def _extra_group_outputs(projections: tuple[Projection, ...], groups: tuple[Path, ...]) -> tuple[Projection, ...]:
    projected = {_key(p.expr) for p in projections if isinstance(p.expr, Path)}
    names = {p.alias for p in projections}
    extra: list[Projection] = []
    for path in groups:
        key, name = _key(path), path.segments[-1]
        if key in projected or name in names:
            continue
        projected.add(key)
        names.add(name)
        extra.append(Projection(path, name, path.pos))
    return tuple(extra)
