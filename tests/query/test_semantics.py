"""Targeted semantics: each case states the selected devices, checked via SQL and oracle."""

from __future__ import annotations

import sqlite3

import pytest

from iot_flows.query import compile_query, run_query

from ._support import execute, insert_twin, make_db, make_twin

TWINS = [
    make_twin(
        "n5",
        statusReason="provisioned",
        tags={"n": 5, "f": 2.5, "s": "a", "flag": True, "nul": None, "arr": [1, 2], "obj": {"k": 1},
              "group": {"name": "g1"}, "odd key": "yes"},
        properties={"desired": {"$version": 3, "mode": "eco"}, "reported": {"$version": 7, "fw": {"v": "2.0"}}},
        capabilities={"iotEdge": True},
    ),
    make_twin("n1", tags={"n": 1, "f": 1.0, "s": "B", "flag": False, "nul": 0, "arr": "x"}),
    make_twin("neg", tags={"n": -7, "f": -1.5, "s": "\u00e9", "flag": "true", "obj": "{\"k\":1}"}),
    make_twin("empty"),
]


@pytest.fixture(scope="module")
def conn() -> sqlite3.Connection:
    db = make_db()
    for twin in TWINS:
        insert_twin(db, twin)
    return db


CASES = [
    # comparisons need the same primitive kind
    ("tags.n = 5", {"n5"}),
    ("tags.n = 5.0", {"n5"}),
    ("tags.n != 5", {"n1", "neg"}),
    ("NOT (tags.n = 5)", {"n1", "neg"}),
    ("tags.n = '5'", set()),
    ("NOT (tags.n = '5')", set()),
    ("tags.s < 'a'", {"n1"}),
    ("tags.s > 'z'", {"neg"}),
    ("tags.f >= 1", {"n5", "n1"}),
    ("tags.n < tags.f", {"n1"} - {"n1"} | {"neg"}),
    ("tags.n > tags.f", {"n5"}),
    # null
    ("tags.nul = null", {"n5"}),
    ("tags.nul != null", set()),
    ("NOT (tags.nul != null)", {"n5"}),
    ("tags.nul < null", set()),
    ("NOT (tags.nul < null)", set()),
    ("tags.n != null", set()),
    ("NOT (tags.n != null)", set()),
    # booleans
    ("tags.flag = true", {"n5"}),
    ("tags.flag != true", {"n1"}),
    ("tags.flag", {"n5"}),
    ("NOT tags.flag", {"n1"}),
    ("tags.flag < true", set()),
    ("NOT (tags.flag < true)", set()),
    ("tags.flag = 1", set()),
    ("tags.flag = 'true'", {"neg"}),
    ("capabilities.iotEdge = true", {"n5"}),
    ("(tags.n = 5) = true", {"n5"}),
    ("(tags.n = 5) = false", {"n1", "neg"}),
    ("(tags.n = 5) = (tags.s = 'a')", {"n5", "n1", "neg"}),
    # undefined
    ("tags.missing != 'x'", set()),
    ("NOT (tags.missing = 'x')", set()),
    ("NOT tags.missing", set()),
    ("tags.obj = tags.obj", {"neg"}),  # an object is not comparable; the string in "neg" is
    ("tags.arr = [1, 2]", set()),
    ("undefined = undefined", set()),
    ("deviceId.x = 'n5'", set()),
    ("properties.reported.$metadata = 1 OR NOT IS_DEFINED(properties.desired.$metadata)",
     {"n5", "n1", "neg", "empty"}),
    ("tags.obj = '{\"k\":1}'", {"neg"}),
    # Kleene logic
    ("NOT (false AND tags.missing = 1)", {"n5", "n1", "neg", "empty"}),
    ("true OR tags.missing = 1", {"n5", "n1", "neg", "empty"}),
    ("NOT (true AND tags.missing = 1)", set()),
    ("tags.n = 5 OR tags.s = 'B'", {"n5", "n1"}),
    ("NOT (tags.n = 5 OR tags.s = 'B')", {"neg"}),
    # IN / NIN
    ("tags.n IN [1, 'a', 5]", {"n5", "n1"}),
    ("tags.n NIN [1, 'a']", {"n5", "neg"}),
    ("tags.missing NIN [1]", set()),
    ("NOT (tags.missing IN [1])", set()),
    ("tags.nul IN [null]", {"n5"}),
    ("tags.nul NIN [null]", {"n1"}),
    ("tags.flag IN [false]", {"n1"}),
    ("tags.arr IN [[1, 2]]", set()),
    ("NOT (tags.arr NIN ['x'])", {"n1"}),
    ("deviceId IN ['n1', 'neg']", {"n1", "neg"}),
    ("deviceId NIN []", {"n5", "n1", "neg", "empty"}),
    # IS_DEFINED
    ("IS_DEFINED(tags.nul)", {"n5", "n1"}),
    ("is_defined(tags.obj.k)", {"n5"}),
    ("NOT IS_DEFINED(statusReason)", {"n1", "neg", "empty"}),
    ("IS_DEFINED(properties.desired) AND IS_DEFINED(tags)", {"n5", "n1", "neg", "empty"}),
    # arithmetic
    ("tags.n + 1 = 6", {"n5"}),
    ("tags.n * 2 - 1 = 9", {"n5"}),
    ("tags.n / 2 = 2.5", {"n5"}),
    ("tags.n / 0 = 1", set()),
    ("NOT (tags.n / 0 = 1)", set()),
    ("tags.n % 3 = -1", {"neg"}),
    ("tags.n % 3 = 2", {"n5"}),
    ("tags.f % 2 = 0.5", {"n5"}),
    ("tags.f % 2 = -1.5", {"neg"}),
    ("tags.n % 0.5 = 0", {"n5", "n1", "neg"}),
    ("-tags.n = 7", {"neg"}),
    ("tags.s + 1 = 1", set()),
    ("NOT (tags.s + 1 = 1)", set()),
    ("tags.flag + 0 = 1", set()),
    ("7 / 2 = 3.5 AND 0x1F = 31 AND -0x1 = -1 AND 1e2 = 100", {"n5", "n1", "neg", "empty"}),
    # literals, escapes, names
    ("'it\\'s' = \"it's\" AND '\\u00e9' = '\u00e9' AND 'a\\\\b' = \"a\\u005cb\"", {"n5", "n1", "neg", "empty"}),
    ("'\\ud83d\\ude00' = '\U0001F600'", {"n5", "n1", "neg", "empty"}),
    ("tags.[[group]].name = 'g1'", {"n5"}),
    ("tags.[[odd key]] = 'yes'", {"n5"}),
    ("Tags.S = 'a'", set()),
    ("TAGS.s = 'a' AND DeviceID = 'n5' AND STATUS = 'enabled'", {"n5"}),
    ("properties.desired.$version = 3 AND properties.reported.$VERSION = 7", {"n5"}),
    ("properties.desired.mode = 'eco' and properties.reported.fw.v = '2.0'", {"n5"}),
    ("statusReason = 'provisioned' AND version = 1 AND etag = 'AAAAAAAAAAE='", {"n5"}),
]


@pytest.mark.parametrize(("condition", "expected"), CASES)
def test_condition(conn: sqlite3.Connection, condition: str, expected: set[str]) -> None:
    text = f"SELECT * FROM devices WHERE {condition}"
    assert set(execute(conn, compile_query(text))) == expected, "sql"
    assert {t["deviceId"] for t in run_query(text, TWINS)} == expected, "oracle"


def _both(conn: sqlite3.Connection, text: str) -> list[dict[str, object]]:
    got = execute(conn, compile_query(text))
    assert sorted(map(repr, got)) == sorted(map(repr, run_query(text, TWINS)))
    return got


def test_projection_values_and_omissions(conn: sqlite3.Connection) -> None:
    got = _both(
        conn,
        "SELECT deviceId, tags.n, tags.flag, tags.nul, tags.arr, tags.obj AS o, capabilities.iotEdge, "
        "properties.desired, version FROM devices WHERE deviceId IN ['n5', 'empty']",
    )
    n5 = next(item for item in got if item["deviceId"] == "n5")
    assert n5 == {
        "deviceId": "n5", "n": 5, "flag": True, "nul": None, "arr": [1, 2], "o": {"k": 1}, "iotEdge": True,
        "desired": {"mode": "eco", "$version": 3}, "version": 1,
    }
    empty = next(item for item in got if item["deviceId"] == "empty")
    assert empty == {"deviceId": "empty", "iotEdge": False, "desired": {"$version": 1}, "version": 1}


def test_top_and_default_aggregate_names(conn: sqlite3.Connection) -> None:
    compiled = compile_query("SELECT TOP 2 * FROM devices")
    assert compiled.top == 2
    assert len(execute(conn, compiled)) == 2
    assert _both(conn, "SELECT COUNT(), SUM(tags.n), max(tags.f) AS hi FROM devices") == [{"$1": 4, "$2": -1, "hi": 2.5}]
    assert _both(conn, "SELECT AVG(tags.s), MIN(tags.missing) FROM devices") == [{}]
    assert _both(conn, "SELECT COUNT() AS n FROM devices WHERE tags.missing = 1") == [{"n": 0}]


def test_group_by_keeps_kinds_apart(conn: sqlite3.Connection) -> None:
    extra = make_db()
    fleet = [make_twin(f"d{i}", tags={"v": v}) for i, v in enumerate([1, 1.0, True, "1", 1, None, [1], {"a": 1}])]
    fleet.append(make_twin("none"))
    for twin in fleet:
        insert_twin(extra, twin)
    text = "SELECT tags.v AS v, COUNT() AS n FROM devices GROUP BY tags.v"
    got = execute(extra, compile_query(text))
    assert sorted(map(repr, got)) == sorted(map(repr, run_query(text, fleet)))
    assert sorted(map(repr, got)) == sorted(
        map(repr, [{"v": 1, "n": 2}, {"v": 1.0, "n": 1}, {"v": True, "n": 1}, {"v": "1", "n": 1},
                   {"v": None, "n": 1}, {"v": [1], "n": 1}, {"v": {"a": 1}, "n": 1}, {"n": 1}])
    )


def test_group_by_path_not_projected_is_reported(conn: sqlite3.Connection) -> None:
    got = _both(conn, "SELECT COUNT() AS n FROM devices GROUP BY tags.flag, status")
    assert sorted(map(repr, got)) == sorted(
        map(repr, [{"n": 1, "flag": True, "status": "enabled"}, {"n": 1, "flag": False, "status": "enabled"},
                   {"n": 1, "flag": "true", "status": "enabled"}, {"n": 1, "status": "enabled"}])
    )


def test_where_sql_is_self_contained(conn: sqlite3.Connection) -> None:
    compiled = compile_query("SELECT * FROM devices WHERE tags.n = 5 OR tags.n = 1")
    rows = conn.execute(f"SELECT device_id FROM devices WHERE {compiled.where_sql} AND device_id = 'n1'", compiled.params)
    assert [r[0] for r in rows] == ["n1"]


def test_index_serves_filters_and_group_by() -> None:
    db = make_db()
    for i in range(50):
        insert_twin(db, make_twin(f"d{i}", properties={"reported": {"firmware": {"version": f"{i % 25}.0"}}}))
    db.execute("CREATE INDEX ix_fw ON devices(json_extract(reported, '$.firmware.version'))")
    db.execute("ANALYZE")

    def plan(sql: str, params: tuple[object, ...] = ()) -> str:
        return " | ".join(row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", params))

    for cond in (
        "properties.reported.firmware.version = '2.0'",
        "properties.reported.firmware.version IN ['1.0', '2.0']",
        "properties.reported.firmware.version >= '1.0' AND properties.reported.firmware.version < '1.1'",
    ):
        compiled = compile_query(f"SELECT * FROM devices WHERE {cond}")
        assert "json_extract(reported, '$.firmware.version')" in compiled.where_sql
        detail = plan(f"SELECT device_id FROM devices WHERE {compiled.where_sql}", compiled.params)
        assert "USING INDEX ix_fw" in detail, (cond, detail)
    assert execute(db, compile_query("SELECT * FROM devices WHERE properties.reported.firmware.version = '2.0'")) == [
        "d2", "d27"
    ]

    group = compile_query(
        "SELECT properties.reported.firmware.version AS v, COUNT() AS n FROM devices "
        "GROUP BY properties.reported.firmware.version"
    )
    db.execute("DROP INDEX ix_fw")
    db.execute(
        "CREATE INDEX ix_fw_typed ON devices(json_extract(reported, '$.firmware.version'), "
        "json_type(reported, '$.firmware.version'))"
    )
    db.execute("ANALYZE")
    detail = plan(group.sql)
    assert "USING INDEX ix_fw_typed" in detail or "USING COVERING INDEX ix_fw_typed" in detail, detail
    assert "TEMP B-TREE" not in detail, detail
    assert execute(db, group) == [{"v": f"{i}.0", "n": 2} for i in sorted(range(25), key=lambda i: f"{i}.0")]
