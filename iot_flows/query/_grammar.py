"""The surface of the IoT Hub query language: Lark grammar, length limit, positioned errors.

Kept apart from the tree builder so the language is readable in one place. Grammar
notes (reference section 4.1):

* Keywords are case-insensitive terminals whose names start with ``_`` (dropped from
  the parse tree). NAME carries the ``i`` flag too, so Lark turns a NAME spelled like a
  keyword into that keyword wherever the keyword is acceptable; with the contextual
  lexer a keyword is an ordinary name after a ``.`` (``tags.group``), and the binder
  rejects a reserved word as a path's first segment.
* ``[[...]]`` escapes one path segment. It has priority over ``[`` where both could
  start an expression; after ``IN`` only an array can follow, so ``IN [['a']]`` is a
  nested array.
* After a ``.``, a segment may start with a digit (``tags.2fa``); a number cannot
  follow a dot, so this does not clash with decimals.
* Comparison is not associative: ``a = b = c`` is a syntax error, use parentheses.
* ``ORDER BY`` and functions other than ``IS_DEFINED`` and the aggregates parse as
  names/calls and are rejected with a position by the tree builder.

Errors: code that does not hold the query text (grammar callbacks, the binder) raises
:class:`Problem` with an offset; the public entry points convert it with
:func:`syntax_error`, the only place a
:class:`~iot_flows._exceptions.QuerySyntaxError` is built. Its message ends with
``at line L, column C`` and its ``info`` carries ``line``, ``column`` and ``offset``.
"""

from __future__ import annotations

import re
from typing import Any

from iot_flows._exceptions import QuerySyntaxError

__all__ = ["GRAMMAR", "MAX_QUERY_LENGTH", "Problem", "check_text", "line_column", "syntax_error"]

_SURROGATE = re.compile("[\ud800-\udfff]")

MAX_QUERY_LENGTH = 8192
"""Longest accepted query or condition, in characters (reference section 4.5)."""


class Problem(Exception):
    """Internal: a rejection at ``offset`` (0-based), not yet tied to the text."""

    def __init__(self, offset: int, message: str) -> None:
        super().__init__(message)
        self.offset = offset
        self.message = message


def line_column(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column of ``offset`` in ``text``."""
    offset = max(0, min(offset, len(text)))
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, column


def syntax_error(text: str, offset: int, message: str) -> QuerySyntaxError:
    """A QuerySyntaxError whose message ends with ``at line L, column C``."""
    line, column = line_column(text, offset)
    return QuerySyntaxError(
        f"{message} at line {line}, column {column}",
        info={"line": line, "column": column, "offset": offset},
    )


def check_text(text: Any) -> str:
    """Reject non-strings, over-long texts and text that is not valid Unicode."""
    if not isinstance(text, str):
        raise QuerySyntaxError(
            f"query must be a string, not {type(text).__name__} at line 1, column 1",
            info={"line": 1, "column": 1, "offset": 0},
        )
    if len(text) > MAX_QUERY_LENGTH:
        raise syntax_error(
            text, MAX_QUERY_LENGTH, f"query is {len(text)} characters long; the limit is {MAX_QUERY_LENGTH}"
        )
    bad = _SURROGATE.search(text)
    if bad is not None:
        raise syntax_error(text, bad.start(), "query contains an unpaired surrogate character")
    return text

GRAMMAR = r"""
query: _SELECT top? select_list _FROM path where? group_by?
condition: expr

top: _TOP NUMBER
select_list: STAR -> select_star
           | projection ("," projection)* -> select_items
projection: (path | call) (_AS NAME)?
where: _WHERE expr
group_by: GROUP _BY path ("," path)*

?expr: or_expr
?or_expr: and_expr (_OR and_expr)*
?and_expr: not_expr (_AND not_expr)*
?not_expr: NOT not_expr -> not_
         | comparison
?comparison: sum
           | sum COMP_OP sum -> compare
           | sum IN array -> in_
           | sum NIN array -> in_
?sum: product
    | sum PLUS product -> arith
    | sum MINUS product -> arith
?product: unary
        | product STAR unary -> arith
        | product SLASH unary -> arith
        | product PERCENT unary -> arith
?unary: MINUS unary -> neg
      | PLUS unary -> neg
      | primary
?primary: literal
        | path
        | call
        | array
        | "(" expr ")"

call: NAME LPAR [expr ("," expr)*] ")"
path: first_segment ("." segment)*
first_segment: NAME | ESCAPED
segment: NAME | ESCAPED | DIGIT_NAME

literal: STRING | NUMBER | HEX | TRUE | FALSE | NULL | UNDEF
array: LSQB [constant ("," constant)*] "]"
?constant: literal
         | MINUS NUMBER -> negative
         | MINUS HEX -> negative
         | array

_SELECT: "select"i
_TOP: "top"i
_FROM: "from"i
_WHERE: "where"i
GROUP: "group"i
_BY: "by"i
_AS: "as"i
_OR: "or"i
_AND: "and"i
NOT: "not"i
IN: "in"i
NIN: "nin"i
TRUE: "true"i
FALSE: "false"i
NULL: "null"i
UNDEF: "undefined"i

NAME: /[a-z_$][a-z0-9_$]*/i
DIGIT_NAME: /[0-9][a-z0-9_$]*/i
ESCAPED.3: /\[\[[^\]]+\]\]/
HEX.2: /0[xX][0-9a-fA-F]+/
NUMBER: /(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?/
STRING: /'(?:[^'\\]|\\.)*'/ | /"(?:[^"\\]|\\.)*"/
COMP_OP: "!=" | "<>" | "<=" | ">=" | "=" | "<" | ">"
STAR: "*"
SLASH: "/"
PERCENT: "%"
PLUS: "+"
MINUS: "-"
LPAR: "("
LSQB: "["

%ignore /\s+/
"""
