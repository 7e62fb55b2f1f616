"""Parse query text into a bound :class:`~._ast.Query` or condition, or raise QuerySyntaxError.

Parsing is a Lark LALR pass with an inline tree builder (:class:`_Builder`, no parse
tree is materialised) followed by :mod:`._bind`, which applies the rules
the grammar cannot express. Every failure, including Lark's own, becomes a
:class:`~iot_flows._exceptions.QuerySyntaxError` whose message ends with
``at line L, column C`` and whose ``info`` carries ``line``, ``column`` and ``offset``.
"""

from __future__ import annotations

import re
from typing import Any, cast

from lark import Lark, Token, Transformer
from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedToken

from ._ast import UNDEFINED, Aggregate, And, Arith, Compare, In, IsDefined, Literal, Neg, Not, Or, Path, Query
from ._bind import bind_condition, bind_query
from ._grammar import GRAMMAR, Problem, check_text, syntax_error

__all__ = ["parse_condition", "parse_query", "parse_tree"]

_RESERVED = frozenset(
    "select top from where group by order as and or not in nin true false null undefined".split()
)
_AGGREGATES = frozenset(["COUNT", "AVG", "SUM", "MIN", "MAX"])
_INT64_MAX = 2**63 - 1
_ESCAPES = {"'": "'", '"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_ESCAPE_RE = re.compile(r"\\(u[0-9a-fA-F]{4}|.)", re.S)


class _Builder(Transformer[Token, Any]):
    """Inline LALR callbacks turning tokens into AST nodes (children are lists)."""

    # -- clauses -----------------------------------------------------------------
    def query(self, c: list[Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"top": None, "where": None, "group": None}
        for item in c:
            if isinstance(item, Path):
                out["source"] = item
            elif isinstance(item, tuple):
                out[item[0]] = item[1:]
        return out

    def condition(self, c: list[Any]) -> Any:
        return c[0]

    def top(self, c: list[Any]) -> tuple[Any, ...]:
        value = _number(c[0])
        if not isinstance(value, int) or value < 0:
            raise Problem(_offset(c[0]), "TOP needs a non-negative integer")
        return ("top", value)

    def select_star(self, c: list[Any]) -> tuple[Any, ...]:
        return ("select", None, _offset(c[0]))

    def select_items(self, c: list[Any]) -> tuple[Any, ...]:
        return ("select", tuple(c), None)

    def projection(self, c: list[Any]) -> tuple[Any, str | None]:
        alias = str(c[1]) if len(c) > 1 else None
        return (c[0], alias)

    def where(self, c: list[Any]) -> tuple[Any, ...]:
        return ("where", c[0])

    def group_by(self, c: list[Any]) -> tuple[Any, ...]:
        return ("group", tuple(c[1:]), _offset(c[0]))

    # -- expressions ---------------------------------------------------------------
    def or_expr(self, c: list[Any]) -> Or:
        return Or(tuple(_flatten(c, Or)), _pos(c[0]))

    def and_expr(self, c: list[Any]) -> And:
        return And(tuple(_flatten(c, And)), _pos(c[0]))

    def not_(self, c: list[Any]) -> Not:
        return Not(c[1], _offset(c[0]))

    def compare(self, c: list[Any]) -> Compare:
        op = "!=" if c[1] == "<>" else str(c[1])
        return Compare(op, c[0], c[2], _offset(c[1]))

    def in_(self, c: list[Any]) -> In:
        return In(c[0], c[2].value, c[1].lower() == "nin", _offset(c[1]))

    def arith(self, c: list[Any]) -> Arith:
        return Arith(str(c[1]), c[0], c[2], _offset(c[1]))

    def neg(self, c: list[Any]) -> Any:
        sign = -1 if c[0] == "-" else 1
        inner = c[1]
        if isinstance(inner, Literal) and _is_number(inner.value):
            return Literal(sign * inner.value, _offset(c[0]))
        return Neg(sign, inner, _offset(c[0]))

    def call(self, c: list[Any]) -> Any:
        name, pos = str(c[0]), _offset(c[0])
        args = [a for a in c[2:] if a is not None]
        upper = name.upper()
        if upper == "IS_DEFINED":
            if len(args) != 1 or not isinstance(args[0], Path):
                raise Problem(_offset(c[1]), "IS_DEFINED expects one property path")
            return IsDefined(args[0], pos)
        if upper in _AGGREGATES:
            if upper == "COUNT":
                if args:
                    raise Problem(_pos(args[0]), "COUNT() takes no argument")
                return Aggregate(upper, None, pos)
            if len(args) != 1 or not isinstance(args[0], Path):
                raise Problem(_offset(c[1]), f"{upper} expects one property path")
            return Aggregate(upper, args[0], pos)
        raise Problem(
            pos, f"unknown function {name!r} (twin and job queries support only IS_DEFINED)"
        )

    # -- paths and constants ---------------------------------------------------------
    def path(self, c: list[Any]) -> Path:
        return Path(tuple(seg for seg, _ in c), c[0][1])

    def first_segment(self, c: list[Token]) -> tuple[str, int]:
        tok = c[0]
        if tok.type == "NAME" and tok.lower() in _RESERVED:
            raise Problem(
                _offset(tok), f"unexpected keyword {str(tok)!r} (escape a property name as [[{tok}]])"
            )
        return self.segment(c)

    def segment(self, c: list[Token]) -> tuple[str, int]:
        tok = c[0]
        if tok.type != "ESCAPED":
            return (str(tok), _offset(tok))
        name = tok[2:-2]
        for i, ch in enumerate(name):
            if ch in '"\\' or ord(ch) < 0x20 or ord(ch) == 0x7F:
                raise Problem(_offset(tok) + 2 + i, f"character {ch!r} is not allowed in a property name")
        return (name, _offset(tok))

    def literal(self, c: list[Token]) -> Literal:
        tok = c[0]
        kind = tok.type
        if kind == "STRING":
            value: Any = _unescape(tok)
        elif kind in ("NUMBER", "HEX"):
            value = _number(tok)
        else:
            value = {"TRUE": True, "FALSE": False, "NULL": None, "UNDEF": UNDEFINED}[kind]
        return Literal(value, _offset(tok))

    def negative(self, c: list[Token]) -> Literal:
        return Literal(-_number(c[1]), _offset(c[0]))

    def array(self, c: list[Any]) -> Literal:
        return Literal(tuple(item.value for item in c[1:] if item is not None), _offset(c[0]))


def _pos(node: Any) -> int:
    return _offset(node) if isinstance(node, Token) else int(node.pos)


def _offset(tok: Token) -> int:
    """Where ``tok`` starts in the text: our lexer always sets it (lark types it Optional)."""
    return tok.start_pos if tok.start_pos is not None else 0


def _flatten(items: list[Any], cls: type[Any]) -> list[Any]:
    out: list[Any] = []
    for item in items:
        out.extend(item.items if isinstance(item, cls) else (item,))
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(tok: Token) -> int | float:
    raw = str(tok)
    try:
        if tok.type == "HEX":
            value: int | float = int(raw, 16)
        elif any(ch in raw for ch in ".eE") or len(raw.lstrip("0")) > 19:
            value = float(raw)
        else:
            value = int(raw)
        if isinstance(value, int) and value > _INT64_MAX:
            value = float(value)
    except (OverflowError, ValueError):
        value = float("inf")
    if value == float("inf"):
        raise Problem(_offset(tok), f"number {raw[:40]!r} is out of range")
    return value


def _unescape(tok: Token) -> str:
    body, base = tok[1:-1], _offset(tok) + 1

    def repl(m: re.Match[str]) -> str:
        esc = m.group(1)
        if len(esc) == 5:
            return chr(int(esc[1:], 16))
        if esc in _ESCAPES:
            return _ESCAPES[esc]
        raise Problem(base + m.start(), f"invalid escape sequence \\{esc}")

    value = _ESCAPE_RE.sub(repl, body) if "\\" in body else body
    if _has_surrogate(value):
        value = _join_surrogates(value)
        if _has_surrogate(value):
            raise Problem(_offset(tok), "string contains an unpaired \\u surrogate")
    return value


def _has_surrogate(value: str) -> bool:
    return any("\ud800" <= ch <= "\udfff" for ch in value)


def _join_surrogates(value: str) -> str:
    """Combine JSON-style ``\\uD83D\\uDE00`` pairs into one character."""
    try:
        return value.encode("utf-16", "surrogatepass").decode("utf-16")
    except UnicodeDecodeError:
        return value


_LARK: Lark | None = None


def _lark() -> Lark:
    """The shared parser, built on first use (the builder callbacks are stateless)."""
    global _LARK
    if _LARK is None:
        _LARK = Lark(
            GRAMMAR, parser="lalr", lexer="contextual", start=["query", "condition"], transformer=_Builder()
        )
    return _LARK


def parse_tree(text: Any, start: str) -> Any:
    """Run the grammar from ``start`` (``query`` or ``condition``) and build unbound nodes.

    Returns a dict of clauses for ``query`` and an expression for ``condition``.
    """
    check_text(text)
    try:
        return _lark().parse(text, start=start)
    except Problem as exc:
        raise syntax_error(text, exc.offset, exc.message) from None
    except UnexpectedCharacters as exc:
        # lark declares pos_in_stream as None on the base class; the lexer sets an int
        pos = cast(int, exc.pos_in_stream)
        char = text[pos] if pos < len(text) else ""
        raise syntax_error(text, pos, f"unexpected character {char!r}") from None
    except UnexpectedToken as exc:
        raise _token_error(text, exc.token) from None
    except LarkError as exc:  # pragma: no cover - other Lark failures carry no position
        raise syntax_error(text, 0, f"cannot parse query ({type(exc).__name__})") from None


def _token_error(text: str, tok: Token) -> Exception:
    if tok.type == "$END":
        return syntax_error(text, len(text), "unexpected end of query")
    offset = _offset(tok)
    word = str(tok)
    if word.lower() == "order":
        return syntax_error(text, offset, "ORDER BY is not supported")
    return syntax_error(text, offset, f"unexpected {word[:40]!r}")


def parse_query(text: str) -> Query:
    """Parse and bind a full query; raises QuerySyntaxError with a position."""
    tree = parse_tree(text, "query")
    try:
        return bind_query(tree)
    except Problem as exc:
        raise syntax_error(text, exc.offset, exc.message) from None


def parse_condition(text: str) -> Any:
    """Parse and bind a WHERE body over device twins (a job's ``queryCondition``).

    Returns None for ``*`` (all devices).
    """
    if isinstance(text, str) and text.strip() == "*":
        return None
    tree = parse_tree(text, "condition")
    try:
        return bind_condition(tree, "devices")
    except Problem as exc:
        raise syntax_error(text, exc.offset, exc.message) from None
