"""Property tests: the SQL compiler selects, projects and groups exactly as the oracle.

Every test runs on each store backend (SQLite and PostgreSQL, ``query_db``): the same
random twins and queries, the same oracle.

Twins are random JSON over a three-key alphabet so that generated paths often exist,
collide with objects, arrays, nulls and values of other kinds. Conditions are random
query text over those paths (so the parser is exercised too), checked plainly, negated
(the compiler's F form) and compared with booleans (its three-valued B form).
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iot_flows.query import run_query

from ._support import as_multiset, insert_twin, make_twin, sql_query

KEYS = ["a", "b", "c"]
STRINGS = ["", "a", "b", "B", "ab", "\u00e9"]
FLOATS = [0.5, -1.5, 2.0, 1.0, 0.0]

primitive = st.one_of(
    st.sampled_from(STRINGS), st.integers(-2, 2), st.sampled_from(FLOATS), st.booleans(), st.none()
)
json_value = st.recursive(
    primitive,
    lambda inner: st.one_of(
        st.lists(inner, max_size=2), st.dictionaries(st.sampled_from(KEYS), inner, min_size=1, max_size=3)
    ),
    max_leaves=4,
)
texts = st.sampled_from(STRINGS)
numbers = st.one_of(st.integers(-2, 2), st.sampled_from(FLOATS))
# Each key leans to one kind (as real properties do) so comparisons often apply; "a" and
# "b" are always present in tags and reported, optional in desired.
_by_key = {
    "a": st.one_of(texts, texts, texts, primitive, json_value),
    "b": st.one_of(numbers, numbers, numbers, primitive, json_value),
    "c": st.one_of(primitive, json_value),
}
section = st.fixed_dictionaries({"a": _by_key["a"], "b": _by_key["b"]}, optional={"c": _by_key["c"]})
sparse_section = st.fixed_dictionaries({}, optional=_by_key)
twin_fields = st.fixed_dictionaries(
    {
        "status": st.sampled_from(["enabled", "disabled"]),
        "statusReason": st.one_of(st.none(), st.sampled_from(STRINGS)),
        "version": st.integers(1, 3),
        "capabilities": st.fixed_dictionaries({"iotEdge": st.booleans()}),
        "tags": section,
        "properties": st.fixed_dictionaries(
            {
                "desired": st.builds(lambda d, v: {**d, "$version": v}, sparse_section, st.integers(1, 3)),
                "reported": st.builds(lambda d, v: {**d, "$version": v}, section, st.integers(1, 3)),
            }
        ),
    }
)
fleets = st.lists(twin_fields, min_size=3, max_size=8).map(
    lambda fields: [make_twin(f"d{i}", **f) for i, f in enumerate(fields)]
)

HOT_PATHS = ["tags.a", "tags.b", "tags.a.b", "properties.reported.a", "properties.desired.b", "TAGS.[[c]]"]
PATHS = HOT_PATHS + [
    "tags.b.c", "tags.c.a", "properties.reported.b.a", "properties.desired.a.a",
    "properties.desired.$version", "properties.reported.$version", "properties.reported.$metadata",
    "deviceId", "status", "statusReason", "version", "capabilities.iotEdge", "tags", "properties.desired",
    "properties", "nothing.here",
]


def literal_text(value: Any) -> str:
    """Render a primitive or array as query text (strings alternate quote styles)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        if len(value) % 2:
            return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return "[" + ", ".join(literal_text(v) for v in value) + "]"


def leaves(value: Any) -> list[Any]:
    """The primitive values inside a JSON value (used to aim literals at real data)."""
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in leaves(v)]
    return [value]


def conditions_for(fleet: list[dict[str, Any]]) -> st.SearchStrategy[str]:
    """Random WHERE bodies whose literals are often values present in ``fleet``."""
    docs = [[t["tags"], t["properties"]] for t in fleet]
    present = sorted({json.dumps(v) for v in leaves(docs)})
    seen = st.sampled_from(present).map(lambda v: literal_text(json.loads(v)))
    paths = st.one_of(st.sampled_from(HOT_PATHS), st.sampled_from(PATHS))
    literals = st.one_of(
        seen,
        seen,
        primitive.map(literal_text),
        st.sampled_from(["undefined", "0x1", "'d1'", "'enabled'", "[1, 'a']"]),
    )
    values = st.recursive(
        st.one_of(paths, paths, literals),
        lambda inner: st.one_of(
            st.tuples(inner, st.sampled_from(["+", "-", "*", "/", "%"]), inner).map(
                lambda t: f"({t[0]} {t[1]} {t[2]})"
            ),
            inner.map(lambda v: f"-({v})"),
        ),
        max_leaves=3,
    )
    in_lists = st.lists(st.one_of(seen, primitive.map(literal_text)), max_size=3).map(
        lambda items: "[" + ", ".join(items) + "]"
    )
    leaf = st.one_of(
        st.tuples(paths, st.sampled_from(COMPARISONS), literals).map(" ".join),
        st.tuples(paths, st.sampled_from(COMPARISONS), literals).map(" ".join),
        st.tuples(literals, st.sampled_from(COMPARISONS), paths).map(" ".join),
        st.tuples(paths, st.sampled_from(COMPARISONS), paths).map(" ".join),
        st.tuples(values, st.sampled_from(COMPARISONS), values).map(" ".join),
        st.tuples(paths, st.sampled_from(["IN", "NIN", "in"]), in_lists).map(" ".join),
        st.tuples(values, st.sampled_from(["IN", "NIN"]), in_lists).map(" ".join),
        paths.map(lambda p: f"IS_DEFINED({p})"),
        values,
    )
    simple = st.one_of(
        st.tuples(paths, st.sampled_from(COMPARISONS), seen).map(" ".join),
        st.tuples(paths, st.sampled_from(["IN", "NIN"]), in_lists).map(" ".join),
    )
    simple = st.one_of(simple, st.tuples(simple, st.sampled_from(["AND", "OR"]), simple).map(" ".join))
    return st.one_of(simple, simple, st.recursive(
        leaf,
        lambda inner: st.one_of(
            inner.map(lambda c: f"NOT ({c})"),
            st.tuples(inner, st.sampled_from(["AND", "OR", "and", "Or"]), inner).map(
                lambda t: f"({t[0]}) {t[1]} ({t[2]})"
            ),
            st.tuples(inner, st.sampled_from(["AND", "OR"]), inner).map(" ".join),
            st.tuples(inner, st.sampled_from(COMPARISONS), inner).map(lambda t: f"({t[0]}) {t[1]} ({t[2]})"),
            st.tuples(inner, st.sampled_from(["IN", "NIN"]), in_lists).map(lambda t: f"({t[0]}) {t[1]} {t[2]}"),
        ),
        max_leaves=4,
    ))


COMPARISONS = ["=", "!=", "<>", "<", ">", "<=", ">="]

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _seed(query_db: Any, fleet: list[dict[str, Any]]) -> Any:
    conn = query_db()
    for twin in fleet:
        insert_twin(conn, twin)
    return conn


@SETTINGS
@given(fleet=fleets, data=st.data())
def test_where_selects_like_the_oracle(query_db: Any, fleet: list[dict[str, Any]], data: st.DataObject) -> None:
    condition = data.draw(conditions_for(fleet), label="condition")
    conn = _seed(query_db, fleet)
    for where in (condition, f"NOT ({condition})", f"({condition}) = false", f"({condition}) != true"):
        text = f"SELECT * FROM devices WHERE {where}"
        expected = sorted(t["deviceId"] for t in run_query(text, fleet))
        assert sql_query(conn, text) == expected, text


@SETTINGS
@given(fleet=fleets, data=st.data(), paths=st.lists(st.sampled_from(PATHS), min_size=1, max_size=3, unique=True))
def test_projections_like_the_oracle(query_db: Any, fleet: list[dict[str, Any]], data: st.DataObject, paths: list[str]) -> None:
    condition = data.draw(conditions_for(fleet), label="condition")
    conn = _seed(query_db, fleet)
    select = ", ".join(f"{p} AS p{i}" for i, p in enumerate(paths))
    text = f"SELECT TOP 100 deviceId AS id, {select} FROM devices WHERE {condition}"
    got = sorted(sql_query(conn, text), key=lambda item: item["id"])
    expected = sorted(run_query(text, fleet), key=lambda item: item["id"])
    sort_keys = not query_db.keeps_key_order
    assert json.dumps(got, sort_keys=sort_keys) == json.dumps(expected, sort_keys=sort_keys), text


@SETTINGS
@given(
    fleet=fleets,
    groups=st.lists(st.sampled_from(PATHS), min_size=1, max_size=2, unique=True),
    measured=st.sampled_from(PATHS),
    data=st.data(),
)
def test_group_by_like_the_oracle(
    query_db: Any, fleet: list[dict[str, Any]], groups: list[str], measured: str, data: st.DataObject
) -> None:
    condition = data.draw(st.one_of(st.none(), conditions_for(fleet)), label="condition")
    conn = _seed(query_db, fleet)
    keys = ", ".join(f"{g} AS g{i}" for i, g in enumerate(groups))
    where = f" WHERE {condition}" if condition else ""
    text = (
        f"SELECT {keys}, COUNT() AS n, SUM({measured}) AS s, AVG({measured}) AS av, MIN({measured}) AS lo, "
        f"MAX({measured}) AS hi FROM devices{where} GROUP BY {', '.join(groups)}"
    )
    assert as_multiset(sql_query(conn, text)) == as_multiset(run_query(text, fleet)), text


@SETTINGS
@given(fleet=fleets, measured=st.sampled_from(PATHS), data=st.data())
def test_aggregates_without_group_by(query_db: Any, fleet: list[dict[str, Any]], measured: str, data: st.DataObject) -> None:
    condition = data.draw(st.one_of(st.none(), conditions_for(fleet)), label="condition")
    conn = _seed(query_db, fleet)
    where = f" WHERE {condition}" if condition else ""
    text = f"SELECT COUNT(), SUM({measured}), MIN({measured}) AS lo, MAX({measured}) FROM devices{where}"
    got = sql_query(conn, text)
    assert len(got) == 1
    assert as_multiset(got) == as_multiset(run_query(text, fleet)), text
