"""Value semantics of the query language, in Python: the reference the SQL must match.

Values are JSON values (dict, list/tuple, str, int, float, bool, None) or UNDEFINED.
Used by the oracle (:mod:`._evaluate`) and by the compiler to fold constants, so a
constant sub-expression means the same in both back ends by construction.

* Comparisons need two primitives of the same kind: numbers (int and float mix),
  strings (code-point order), booleans (``=``/``!=`` only), nulls (``null = null``
  is true, ``null != null`` false, ordering undefined). Anything else is undefined.
* ``IN``/``NIN``: a primitive left side gives true/false by same-kind equality;
  any other left side (undefined, object, array) gives undefined.
* Arithmetic needs numbers, else undefined. ``/`` is floating-point; ``%`` is
  C ``fmod`` (sign of the dividend), both as SQLite computes them; division by zero and
  NaN results are undefined; int64 overflow falls back to float, as in SQLite.
* NOT/AND/OR are Kleene logic over true/false/undefined, where only a Boolean is a
  truth value (``false AND x`` is false, ``true OR x`` is true).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

from ._ast import UNDEFINED

__all__ = ["arith", "compare", "kind", "logical_and", "logical_not", "logical_or", "member", "negate", "truth"]

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
    "<=": operator.le,
    ">=": operator.ge,
}


def kind(value: Any) -> str:
    """``number``, ``text``, ``bool``, ``null``, ``array``, ``object`` or ``undefined``."""
    if value is UNDEFINED:
        return "undefined"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, (list, tuple)):
        return "array"
    return "object"


def compare(op: str, left: Any, right: Any) -> Any:
    """``left op right`` -> True, False or UNDEFINED."""
    k = kind(left)
    if k != kind(right):
        return UNDEFINED
    if k == "null":
        return {"=": True, "!=": False}.get(op, UNDEFINED)
    if k == "bool" and op not in ("=", "!="):
        return UNDEFINED
    if k not in ("number", "text", "bool"):
        return UNDEFINED
    return _ORDER[op](left, right)


def member(left: Any, items: tuple[Any, ...], negated: bool) -> Any:
    """``left IN items`` (or NIN) -> True, False or UNDEFINED."""
    if kind(left) not in ("number", "text", "bool", "null"):
        return UNDEFINED
    found = any(compare("=", left, item) is True for item in items)
    return found != negated


def _int_or_float(result: Any, a: Any, b: Any, op: Callable[[Any, Any], Any]) -> Any:
    if isinstance(result, int) and not _INT64_MIN <= result <= _INT64_MAX:
        return op(float(a), float(b))
    return result


def arith(op: str, left: Any, right: Any) -> Any:
    """``left op right`` for ``+ - * / %`` -> number or UNDEFINED."""
    if kind(left) != "number" or kind(right) != "number":
        return UNDEFINED
    try:
        if op == "+":
            result = _int_or_float(left + right, left, right, operator.add)
        elif op == "-":
            result = _int_or_float(left - right, left, right, operator.sub)
        elif op == "*":
            result = _int_or_float(left * right, left, right, operator.mul)
        elif op == "/":
            result = float(left) / float(right)
        else:
            result = math.fmod(float(left), float(right))
    except (ZeroDivisionError, ValueError, OverflowError):
        return UNDEFINED
    if isinstance(result, float) and math.isnan(result):
        return UNDEFINED
    return result


def negate(sign: int, value: Any) -> Any:
    """Unary ``-`` (sign -1) or ``+`` (sign 1): numbers only."""
    if kind(value) != "number":
        return UNDEFINED
    if sign > 0:
        return value
    result = -value
    if isinstance(result, int) and result > _INT64_MAX:
        return -float(value)
    return result


def truth(value: Any) -> Any:
    """A value as a truth value: a Boolean stays, anything else is UNDEFINED."""
    return value if isinstance(value, bool) else UNDEFINED


def logical_not(value: Any) -> Any:
    """Kleene NOT."""
    value = truth(value)
    return UNDEFINED if value is UNDEFINED else not value


def logical_and(values: list[Any]) -> Any:
    """Kleene AND over two or more operands."""
    result: Any = True
    for value in map(truth, values):
        if value is False:
            return False
        if value is UNDEFINED:
            result = UNDEFINED
    return result


def logical_or(values: list[Any]) -> Any:
    """Kleene OR over two or more operands."""
    result: Any = False
    for value in map(truth, values):
        if value is True:
            return True
        if value is UNDEFINED:
            result = UNDEFINED
    return result
