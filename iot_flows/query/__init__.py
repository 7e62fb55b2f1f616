"""IoT Hub query language: parser, SQL compiler (SQLite; PostgreSQL with ``POSTGRES``), a pure-Python oracle.

Reference: docs/iothub-reference.md §4. The pieces:

* :func:`parse_query` / :func:`parse_condition`: text -> bound syntax tree
  (:mod:`._ast`), or :class:`~iot_flows._exceptions.QuerySyntaxError` (400004) whose
  message gives the line and column; nothing else escapes for any input string.
* :func:`compile_query` / :func:`compile_condition`: SQL for the store's ``devices`` and
  ``device_jobs`` tables (:class:`CompiledQuery`), and :func:`row_to_item` for raw rows.
* :func:`run_query` / :func:`evaluate_condition`: the same semantics over in-memory
  twin / device-job documents, used as the test oracle.
"""

from ._ast import UNDEFINED, Query
from ._compile import CompiledQuery, compile_condition, compile_parsed, compile_query, row_to_item
from ._dialect import SqlDialect
from ._evaluate import evaluate_condition, run_query
from ._grammar import MAX_QUERY_LENGTH
from ._parser import parse_condition, parse_query
from ._pgdialect import POSTGRES

__all__ = [
    "MAX_QUERY_LENGTH",
    "POSTGRES",
    "UNDEFINED",
    "CompiledQuery",
    "Query",
    "SqlDialect",
    "compile_condition",
    "compile_parsed",
    "compile_query",
    "evaluate_condition",
    "parse_condition",
    "parse_query",
    "row_to_item",
    "run_query",
]
