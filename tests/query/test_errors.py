"""Rejections carry a position; no input makes parse/compile raise anything else."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iot_flows._exceptions import BadRequestError, QuerySyntaxError
from iot_flows.query import MAX_QUERY_LENGTH, compile_condition, compile_query, parse_query, run_query

from ._support import execute, insert_twin, make_db, make_twin

POSITION = re.compile(r"at line (\d+), column (\d+)$")

ERRORS = [
    ("SELECT * FROM devices WHERE", "unexpected end of query", (1, 28)),
    ("SELECT * FROM devices WHERE tags.x = ", "unexpected end of query", (1, 38)),
    ("SELECT * FROM devices ORDER BY deviceId", "ORDER BY is not supported", (1, 23)),
    ("SELECT * FROM devices WHERE STARTSWITH(deviceId, 'a')", "unknown function 'STARTSWITH'", (1, 29)),
    ("SELECT * FROM devices WHERE lower(deviceId) = 'a'", "unknown function 'lower'", (1, 29)),
    ("SELECT COUNT() FROM devices.jobs", "aggregates are not supported on devices.jobs", (1, 8)),
    ("SELECT devices.jobs.jobId FROM devices.jobs", "projections are not supported on devices.jobs", (1, 8)),
    ("SELECT * FROM devices.jobs GROUP BY devices.jobs.status", "GROUP BY is not supported on devices.jobs", (1, 28)),
    ("SELECT * FROM devices.jobs WHERE tags.x = 1", "only use devices.jobs.<field>", (1, 34)),
    ("SELECT * FROM devices.modules", "devices.modules is not supported", (1, 15)),
    ("SELECT * FROM things", "unknown collection 'things'", (1, 15)),
    ("SELECT * FROM devices GROUP BY status", "SELECT * cannot be combined with GROUP BY", (1, 23)),
    ("SELECT deviceId, COUNT() FROM devices", "'deviceId' must appear in GROUP BY", (1, 8)),
    ("SELECT status, status FROM devices", "duplicate output name 'status'", (1, 16)),
    ("SELECT * FROM devices WHERE COUNT() > 1", "only allowed in the select list", (1, 29)),
    ("SELECT IS_DEFINED(tags.x) FROM devices", "projections must be property paths or aggregates", (1, 8)),
    ("SELECT COUNT(tags.x) FROM devices", "COUNT() takes no argument", (1, 14)),
    ("SELECT SUM() FROM devices", "SUM expects one property path", (1, 11)),
    ("SELECT * FROM devices WHERE IS_DEFINED('x')", "IS_DEFINED expects one property path", (1, 39)),
    ("SELECT * FROM devices WHERE x = 'a\\qb'", "invalid escape sequence \\q", (1, 35)),
    ("SELECT * FROM devices WHERE x = 'open", "unexpected character \"'\"", (1, 33)),
    ("SELECT * FROM devices WHERE x = '\\ud800'", "unpaired \\u surrogate", (1, 33)),
    ("SELECT * FROM devices WHERE x = 1e999", "out of range", (1, 33)),
    ("SELECT TOP 1.5 * FROM devices", "TOP needs a non-negative integer", (1, 12)),
    ("SELECT * FROM devices WHERE a = 1 = 2", "unexpected '='", (1, 35)),
    ("SELECT * FROM devices WHERE and = 1", "unexpected keyword 'and'", (1, 29)),
    ("SELECT * FROM devices WHERE x = @", "unexpected character '@'", (1, 33)),
    ("SELECT *\nFROM devices\n  WHERE tags.[[a\"b]] = 1", "not allowed in a property name", (3, 17)),
    ("SELECT * FROM devices WHERE x IN tags.y", "unexpected 'tags'", (1, 34)),
    ("", "unexpected end of query", (1, 1)),
    ("SELECT * FROM devices WHERE " + "NOT " * 120 + "true", "nested more than 100 levels", (1, 429)),
]


@pytest.mark.parametrize(("text", "message", "where"), ERRORS)
def test_rejections_name_the_position(text: str, message: str, where: tuple[int, int]) -> None:
    with pytest.raises(QuerySyntaxError) as info:
        compile_query(text)
    err = info.value
    assert message in err.message
    match = POSITION.search(err.message)
    assert match is not None, err.message
    assert (int(match.group(1)), int(match.group(2))) == where
    assert err.info["line"], err.info["column"] == where
    assert isinstance(err, BadRequestError)
    assert (err.status_code, err.error_code) == (400, 400004)


def test_length_limit() -> None:
    base = "SELECT * FROM devices WHERE deviceId = '"
    fits = base + "x" * (MAX_QUERY_LENGTH - len(base) - 1) + "'"
    assert len(fits) == MAX_QUERY_LENGTH
    compile_query(fits)
    with pytest.raises(QuerySyntaxError, match=r"8193 characters long; the limit is 8192 at line 1, column 8193"):
        compile_query(fits + " ")
    with pytest.raises(QuerySyntaxError, match="limit is 8192"):
        compile_condition("deviceId = 'a'" + " " * 8192)


def test_non_string_and_condition_errors() -> None:
    with pytest.raises(QuerySyntaxError, match="must be a string.*line 1, column 1"):
        compile_query(None)  # type: ignore[arg-type]
    with pytest.raises(QuerySyntaxError, match="unexpected 'deviceId' at line 1, column 7"):
        compile_condition("WHERE deviceId = 'a'")
    with pytest.raises(QuerySyntaxError, match="line 1, column 1"):
        compile_condition("")


@pytest.mark.parametrize(
    "text",
    [
        "SELECT * FROM devices WHERE " + "-" * 6000 + "tags.x = 1",
        "SELECT * FROM devices WHERE " + "NOT " * 1500 + "true",
        "SELECT * FROM devices WHERE tags.x = " + " + ".join(["1"] * 2000),
        "SELECT * FROM devices WHERE " + "(tags.x = 1 AND (tags.y = 1 OR " * 60 + "true" + "))" * 60,
    ],
)
def test_deep_nesting_is_a_syntax_error_not_a_crash(text: str) -> None:
    with pytest.raises(QuerySyntaxError, match="nested more than 100 levels"):
        compile_query(text)


def test_parentheses_and_nested_arrays_add_no_depth() -> None:
    conn = make_db()
    insert_twin(conn, make_twin("d1", tags={"x": 1}))
    text = "SELECT * FROM devices WHERE " + "(" * 3000 + "tags.x = 1" + ")" * 3000
    assert execute(conn, compile_query(text)) == ["d1"]
    text = "SELECT * FROM devices WHERE tags.x NIN " + "[" * 3000 + "]" * 3000
    assert execute(conn, compile_query(text)) == ["d1"]


def test_long_flat_chains_compile_and_run() -> None:
    conn = make_db()
    insert_twin(conn, make_twin("d1", tags={"x": 1}))
    for op in (" AND ", " OR "):
        text = "SELECT * FROM devices WHERE " + op.join(["tags.x=1"] * 620)
        assert len(text) <= MAX_QUERY_LENGTH
        assert execute(conn, compile_query(text)) == ["d1"]
    text = "SELECT * FROM devices WHERE deviceId IN [" + ", ".join(f"'d{i}'" for i in range(900)) + "]"
    assert execute(conn, compile_query(text)) == ["d1"]


_FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_DB = make_db()
_FLEET = [
    make_twin("a", tags={"x": 1, "y": "s", "z": {"x": None}}, properties={"reported": {"x": [1], "y": True}}),
    make_twin("b", tags={"x": 2.5, "y": "t"}, properties={"desired": {"x": "s"}}),
]
for _twin in _FLEET:
    insert_twin(_DB, _twin)


def _check(text: str) -> None:
    """Compile or reject; compiled SQL must run, and agree with the oracle."""
    try:
        compiled = compile_query(text)
    except QuerySyntaxError as exc:
        assert POSITION.search(exc.message), exc.message
        return
    got = execute(_DB, compiled)
    expected = run_query(parse_query(text), _FLEET)
    if compiled.item_type == "twin":
        assert got == sorted(t["deviceId"] for t in expected)
    elif compiled.item_type == "raw" and not parse_query(text).is_aggregate:
        assert sorted(map(repr, got)) == sorted(map(repr, expected))


@_FUZZ
@given(st.text(max_size=200))
def test_any_text_compiles_or_is_a_syntax_error(text: str) -> None:
    _check(text)


@_FUZZ
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=60))
def test_any_condition_compiles_or_is_a_syntax_error(text: str) -> None:
    try:
        sql, params = compile_condition(text)
    except QuerySyntaxError as exc:
        assert POSITION.search(exc.message), exc.message
        return
    _DB.execute(f"SELECT device_id FROM devices WHERE {sql}", params).fetchall()


TOKENS = [
    "tags", "tags.x", "tags.y", "tags.z.x", "properties.reported.x", "properties.desired", "deviceId", ".", ",",
    "(", ")", "[", "]", "[[x]]", "=", "!=", "<>", "<", "<=", ">", ">=", "+", "-", "*", "/", "%", "AND", "or",
    "NOT", "IN", "NIN", "IS_DEFINED", "COUNT", "true", "false", "null", "undefined", "1", "2.5", "0x10", "'s'",
    '"t"', "'\\u0041'", "GROUP BY", "AS", "TOP", "x", "$version", "1e3", "-",
]
PREFIXES = ["SELECT * FROM devices WHERE ", "SELECT ", "SELECT deviceId, tags.x AS t FROM devices WHERE ", ""]


@_FUZZ
@given(st.sampled_from(PREFIXES), st.lists(st.sampled_from(TOKENS), max_size=14))
def test_token_soup_compiles_or_is_a_syntax_error(prefix: str, tokens: list[str]) -> None:
    _check(prefix + " ".join(tokens))


def test_error_does_not_leak_other_exceptions_for_odd_inputs() -> None:
    for text in ["\x00", "SELECT * FROM devices WHERE tags.[[\x00]] = 1", "SELECT * FROM devices WHERE x = '\x00'",
                 "SELECT * FROM devices WHERE x = 0x" + "F" * 5000, "SELECT * FROM devices WHERE x = " + "9" * 5000,
                 "\ud800", "SELECT * FROM devices WHERE tags.[[\u00e9]] = 1"]:
        try:
            compiled = compile_query(text)
        except QuerySyntaxError as exc:
            assert POSITION.search(exc.message), exc.message
        else:
            execute(_DB, compiled)
