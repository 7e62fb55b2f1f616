"""Compile bound expressions to SQL (SQLite, or PostgreSQL via ``_dialect``) over the ``devices`` / ``device_jobs`` tables.

Every Boolean node compiles to three fragments:

* ``T``: a predicate that holds exactly when the node is *true* (used for WHERE);
* ``F``: a predicate that holds exactly when the node is *false* (used under NOT, so
  negation is pushed to the leaves instead of wrapping a NULL-producing expression);
* ``B``: the node's three-valued value as 1/0/NULL (used when a Boolean is compared,
  e.g. ``(a = 1) = true``).

``T``/``F`` may evaluate to NULL where they do not hold; AND/OR are monotone, so NULL
behaves like 0 there. This split lets the common leaf ``path = 'x'`` become
``json_extract(col, '$.path') = ? AND json_type(col, '$.path') = 'text'``, whose first
conjunct is exactly the expression of a user's index, while ``NOT (path = 'x')``
becomes ``json_extract(...) != ? AND json_type(...) = 'text'`` and so stays undefined
(unselected) for a number, a missing path, an object...

Value nodes compile to a :class:`Val`: a literal, a dynamic JSON value (value and
``json_type`` fragments), or a value of a statically known kind (``text``, ``number``,
``bool``, ``object``) that is SQL NULL when undefined, so plain SQL operators
propagate undefined. Every form references each operand fragment at most once per
SQL kind tested, so nesting never duplicates sub-expressions exponentially.
Constant sub-expressions are folded with the oracle's own functions (``_values``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._ast import UNDEFINED, And, Arith, Compare, In, IsDefined, Literal, Neg, Not, Or, Path, Ref
from ._dialect import current
from ._sqlfrag import (
    FALSE,
    NULL,
    TRUE,
    Frag,
    all_of,
    any_of,
    case_when,
    cat,
    const,
    kleene_and,
    kleene_not,
    kleene_or,
)
from ._values import arith, compare, kind, member, negate, truth

__all__ = ["Val", "forms", "numeric", "value"]

_NEGATED = {"=": "!=", "!=": "=", "<": ">=", ">": "<=", "<=": ">", ">=": "<"}
_ELIGIBLE = {
    "=": ("bool", "null", "number", "text"),
    "!=": ("bool", "null", "number", "text"),
}
_ORDERED = ("number", "text")
_JSON_KINDS = frozenset(["number", "text", "bool", "null", "array", "object"])

Forms = tuple[Frag, Frag, Frag]


@dataclass(frozen=True)
class Val:
    """A compiled value: ``kind`` is ``lit``, ``json`` or a static kind (see module doc)."""

    kind: str
    sql: Frag = NULL
    typ: Frag = NULL
    lit: Any = UNDEFINED

    def possible(self) -> frozenset[str]:
        """Kinds the value can have at run time (besides undefined)."""
        if self.kind == "lit":
            k = kind(self.lit)
            return frozenset() if k == "undefined" else frozenset([k])
        if self.kind == "json":
            return _JSON_KINDS
        return frozenset([self.kind])

    def is_kind(self, k: str) -> Frag:
        """Condition for "the value has kind k", TRUE when known statically (NULL propagates)."""
        if self.kind == "json":
            return cat(self.typ, " ", current().type_test(k))
        return TRUE

    def defined_as(self, k: str) -> Frag:
        """Condition for "the value is defined and of kind k"."""
        if self.kind == "json":
            return self.is_kind(k)
        if self.kind == "lit":
            return TRUE
        return cat(self.sql, " IS NOT NULL")

    def operand(self) -> Frag:
        """The value as an SQL operand (JSON booleans read as 1/0)."""
        return current().literal(self.lit) if self.kind == "lit" else self.sql


_UNDEFINED_VAL = Val("lit", lit=UNDEFINED)


def _ref_val(ref: Ref) -> Val:
    if ref.kind == "column":
        return Val(ref.value_kind, Frag(ref.column))
    if ref.kind == "json":
        return Val("json", *current().json_ref(ref.column, ref.json_path))
    if ref.kind == "section":
        return Val("object", current().section(ref.column))
    if ref.kind == "properties":
        dialect = current()
        return Val("object", dialect.properties(dialect.section("desired"), dialect.section("reported")))
    return _UNDEFINED_VAL


def numeric(v: Val) -> Val:
    """The value if it is a number, else undefined (a ``number``-kind Val or literal)."""
    if v.kind == "lit":
        return v if kind(v.lit) == "number" else _UNDEFINED_VAL
    if v.kind == "json":
        return Val("number", current().json_number(v))
    return v if v.kind == "number" else _UNDEFINED_VAL


def value(node: Any) -> Val:
    """Compile a node used as a value."""
    if isinstance(node, Literal):
        return Val("lit", lit=node.value)
    if isinstance(node, Path):
        assert node.ref is not None, "unbound path"
        return _ref_val(node.ref)
    if isinstance(node, Arith):
        left, right = numeric(value(node.left)), numeric(value(node.right))
        if _UNDEFINED_VAL in (left, right) or (left.kind == "lit" and right.kind == "lit"):
            return Val("lit", lit=arith(node.op, left.lit, right.lit))
        return Val("number", current().arith(node.op, left.operand(), right.operand()))
    if isinstance(node, Neg):
        inner = numeric(value(node.operand))
        if inner.kind == "lit":
            return Val("lit", lit=negate(node.sign, inner.lit))
        return inner if node.sign > 0 else Val("number", cat("(- ", inner.sql, ")"))
    b = forms(node)[2]
    if b.is_const:
        return Val("lit", lit=UNDEFINED if b.const is None else b.const)
    return Val("bool", cat("(", b, ")"))


def _truth(v: Val) -> Forms:
    if v.kind == "lit":
        t = truth(v.lit)
        return const(t is True), const(t is False), const(t)
    if v.kind == "json":
        return current().json_truth(v)
    if v.kind == "bool":
        return v.sql, kleene_not(v.sql), v.sql
    return FALSE, FALSE, NULL


def _compare(op: str, a: Val, b: Val) -> Forms:
    if a.kind == "lit" and b.kind == "lit":
        r = compare(op, a.lit, b.lit)
        return const(r is True), const(r is False), const(r)
    eligible = _ELIGIBLE.get(op, _ORDERED)
    kinds = sorted(a.possible() & b.possible() & frozenset(eligible))
    t_terms: list[Frag] = []
    f_terms: list[Frag] = []
    cases: list[tuple[Frag, Frag]] = []
    # one side JSON, the other of a known kind: in some dialects equality alone implies the kind
    implied = op == "=" and current().equality_implies_kind and (a.kind == "json") != (b.kind == "json")
    for k in kinds:
        cond = all_of([a.is_kind(k), b.is_kind(k)])
        if k == "null":
            (t_terms if op == "=" else f_terms).append(cond)
            cases.append((cond, TRUE if op == "=" else FALSE))
            continue
        va, vb = current().operands(k, a, b)
        yes, no = cat(va, f" {op} ", vb), cat(va, f" {_NEGATED[op]} ", vb)
        t_terms.append(yes if implied else all_of([yes, cond]))
        f_terms.append(all_of([no, cond]))
        cases.append((cond, cat("(", yes, ")")))
    return any_of(t_terms), any_of(f_terms), case_when(cases)


def _member(a: Val, items: tuple[Any, ...], negated: bool) -> Forms:
    if a.kind == "lit":
        r = member(a.lit, items, negated)
        return const(r is True), const(r is False), const(r)
    kinds = sorted(a.possible() & {"number", "text", "bool", "null"})
    t_terms: list[Frag] = []
    f_terms: list[Frag] = []
    for k in kinds:
        vals = list(dict.fromkeys(v for v in items if kind(v) == k))
        if k == "null":
            (t_terms if vals else f_terms).append(a.defined_as(k))
        elif vals:
            operand, listed = current().in_operands(a, k, vals)
            inside = cat(operand, " IN ", listed)
            implied = a.kind == "json" and current().equality_implies_kind
            t_terms.append(inside if implied else all_of([inside, a.is_kind(k)]))
            f_terms.append(all_of([cat(operand, " NOT IN ", listed), a.is_kind(k)]))
        else:
            f_terms.append(a.defined_as(k))
    t, f = any_of(t_terms), any_of(f_terms)
    if a.kind == "json":
        b = case_when([(t, TRUE), (f, FALSE)])
    elif not kinds:
        b = NULL
    elif t_terms:
        b = t
    else:
        b = current().null_when_null(a.sql)
    return (f, t, kleene_not(b)) if negated else (t, f, b)


def _is_defined(ref: Ref) -> Frag:
    if ref.kind == "json":
        return cat(_ref_val(ref).typ, " IS NOT NULL")
    if ref.kind == "column":
        return Frag(f"{ref.column} IS NOT NULL")
    return TRUE if ref.kind in ("section", "properties") else FALSE


def forms(node: Any) -> Forms:
    """Compile a node used as a condition to its (T, F, B) fragments."""
    if isinstance(node, And):
        parts = [forms(i) for i in node.items]
        return all_of([p[0] for p in parts]), any_of([p[1] for p in parts]), kleene_and([p[2] for p in parts])
    if isinstance(node, Or):
        parts = [forms(i) for i in node.items]
        return any_of([p[0] for p in parts]), all_of([p[1] for p in parts]), kleene_or([p[2] for p in parts])
    if isinstance(node, Not):
        t, f, b = forms(node.operand)
        return f, t, kleene_not(b)
    if isinstance(node, Compare):
        return _compare(node.op, value(node.left), value(node.right))
    if isinstance(node, In):
        return _member(value(node.left), node.items, node.negated)
    if isinstance(node, IsDefined):
        assert node.path.ref is not None, "unbound path"
        d = _is_defined(node.path.ref)
        return d, kleene_not(d), d
    return _truth(value(node))
