"""Syntax tree of the IoT Hub query language, shared by the SQL compiler and the oracle.

The parser (:mod:`._parser`) builds these frozen dataclasses and then *binds* every
:class:`Path` to a :class:`Ref`: what the path addresses in the store (a column, a JSON
column plus a path inside it, a synthesised object, or nothing). Both back ends read the
same bound tree, so the SQL compiler and the pure-Python evaluator cannot disagree about
what a path means, only about how a value is computed; the property tests check that.

Values of the language are JSON values or :data:`UNDEFINED` (path absent). Literal
arrays are tuples so that nodes stay hashable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "UNDEFINED",
    "Aggregate",
    "And",
    "Arith",
    "Compare",
    "Expr",
    "In",
    "IsDefined",
    "Literal",
    "Neg",
    "Not",
    "Or",
    "Path",
    "Projection",
    "Query",
    "Ref",
    "children",
]


class _Undefined:
    """The ``undefined`` value: what an absent path evaluates to (not JSON ``null``)."""

    _instance: _Undefined | None = None

    def __new__(cls) -> _Undefined:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNDEFINED"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        return "UNDEFINED"


UNDEFINED: Any = _Undefined()


@dataclass(frozen=True)
class Ref:
    """What a bound path addresses; see :mod:`._paths` for the field table.

    ``kind``:

    * ``column``: a plain SQL column (``value_kind`` ``text`` or ``number``; NULL is
      undefined); ``doc_path`` is the field's key path in the REST document.
    * ``json``: ``json_extract(column, '$.<json_path>')``; ``doc_path`` is the key path of
      the JSON section in the document; ``empty_default`` says the column is never NULL
      (the oracle treats a missing section as ``{}``).
    * ``section``: the whole ``properties.desired`` / ``properties.reported`` object
      (with ``$version``); ``column`` names the section.
    * ``properties``: the whole ``properties`` object.
    * ``undefined``: a path no document has (unknown root, ``$metadata``...).
    """

    kind: str
    column: str = ""
    json_path: tuple[str, ...] = ()
    value_kind: str = ""
    doc_path: tuple[str, ...] = ()
    empty_default: bool = False


@dataclass(frozen=True)
class Path:
    """A dotted attribute path as written (``segments``) and, once bound, its ``ref``."""

    segments: tuple[str, ...]
    pos: int
    ref: Ref | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Literal:
    """A constant: str, int, float, bool, None (JSON null), UNDEFINED or a tuple (array)."""

    value: Any
    pos: int


@dataclass(frozen=True)
class Neg:
    """Unary minus (``sign`` -1) or plus (``sign`` 1): numbers only, else undefined."""

    sign: int
    operand: Expr
    pos: int


@dataclass(frozen=True)
class Arith:
    """Binary arithmetic ``+ - * / %``: numbers only, else undefined."""

    op: str
    left: Expr
    right: Expr
    pos: int


@dataclass(frozen=True)
class Compare:
    """Comparison ``= != < > <= >=`` (``<>`` is normalised to ``!=``)."""

    op: str
    left: Expr
    right: Expr
    pos: int


@dataclass(frozen=True)
class In:
    """``left IN [items]`` or, when ``negated``, ``left NIN [items]``."""

    left: Expr
    items: tuple[Any, ...]
    negated: bool
    pos: int


@dataclass(frozen=True)
class IsDefined:
    """``IS_DEFINED(path)``: true iff the path exists (JSON null counts as defined)."""

    path: Path
    pos: int


@dataclass(frozen=True)
class Not:
    """Logical NOT: undefined stays undefined."""

    operand: Expr
    pos: int


@dataclass(frozen=True)
class And:
    """Logical AND of two or more operands (chains are flattened)."""

    items: tuple[Expr, ...]
    pos: int


@dataclass(frozen=True)
class Or:
    """Logical OR of two or more operands (chains are flattened)."""

    items: tuple[Expr, ...]
    pos: int


Expr = Path | Literal | Neg | Arith | Compare | In | IsDefined | Not | And | Or


@dataclass(frozen=True)
class Aggregate:
    """``COUNT()`` (``arg`` None) or ``AVG/SUM/MIN/MAX(path)``; ``func`` is upper case."""

    func: str
    arg: Path | None
    pos: int


@dataclass(frozen=True)
class Projection:
    """One element of the select list with its output name (explicit or defaulted)."""

    expr: Path | Aggregate
    alias: str
    pos: int


@dataclass(frozen=True)
class Query:
    """A whole ``SELECT``; ``projections`` is None for ``SELECT *``.

    ``source`` is ``devices`` or ``devices.jobs``. ``extra_group_outputs`` lists
    GROUP BY paths that are not projected, with the output name they are reported
    under (their last segment).
    """

    source: str
    top: int | None
    projections: tuple[Projection, ...] | None
    where: Expr | None
    group_by: tuple[Path, ...]
    extra_group_outputs: tuple[Projection, ...] = ()

    @property
    def is_aggregate(self) -> bool:
        """True when the query returns groups (aggregates or GROUP BY)."""
        if self.group_by:
            return True
        return any(isinstance(p.expr, Aggregate) for p in self.projections or ())


def children(node: Any) -> tuple[Any, ...]:
    """The direct sub-expressions of ``node`` (used for iterative walks)."""
    if isinstance(node, (And, Or)):
        return node.items
    if isinstance(node, (Arith, Compare)):
        return (node.left, node.right)
    if isinstance(node, (Neg, Not)):
        return (node.operand,)
    if isinstance(node, In):
        return (node.left,)
    if isinstance(node, IsDefined):
        return (node.path,)
    return ()
