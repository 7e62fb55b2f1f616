"""Query compiler on a 100,000-twin SQLite store: filters and GROUP BY, with and without indexes.

    .venv/bin/python -m bench.bench_query [--count 100000] [--repeat 5]

Builds a throw-away database file with the store schema and synthetic twins (20
firmware versions of 5% each, plus a rare version on 1 device in 10,000), then times
compiled queries under four index setups:

* ``none``: only the schema's own indexes;
* ``json_extract``: ``CREATE INDEX ON devices(json_extract(reported, '$.firmware.version'))``,
  the expression the compiler emits for ``properties.reported.firmware.version``;
* ``json_extract+json_type``: also covers the compiler's GROUP BY key (value, JSON type);
* ``json_extract+device_id``: lets the hub's keyset paging (``AND device_id > ?
  ORDER BY device_id``) use the index instead of walking the primary key.

``*_ids`` run the bare compiled WHERE (``SELECT device_id ... WHERE <where_sql>``);
``*_first_page`` run it as the hub pages twins (``SELECT * ... AND device_id > ? ORDER BY
device_id LIMIT 101``). Prints one JSON object: medians in milliseconds and plans.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

from iot_flows.query import compile_condition, compile_parsed, compile_query, parse_query, row_to_item
from iot_flows.store._schema import DDL, JOBS_DDL

TS = "2024-01-01T00:00:00.0000000Z"
FILTER = "SELECT * FROM devices WHERE properties.reported.firmware.version = '1.7.0'"
FILTER_RARE = "SELECT * FROM devices WHERE properties.reported.firmware.version = '9.9.9'"
FILTER_AND = (
    "SELECT * FROM devices WHERE properties.reported.firmware.version = '1.7.0' AND tags.location.building = '12'"
)
GROUP = (
    "SELECT properties.reported.firmware.version AS version, COUNT() AS devices FROM devices "
    "GROUP BY properties.reported.firmware.version"
)
INDEXES = {
    "none": [],
    "json_extract": ["CREATE INDEX ix_fw ON devices(json_extract(reported, '$.firmware.version'))"],
    "json_extract+json_type": [
        "CREATE INDEX ix_fw2 ON devices(json_extract(reported, '$.firmware.version'), "
        "json_type(reported, '$.firmware.version'))"
    ],
    "json_extract+device_id": [
        "CREATE INDEX ix_fw3 ON devices(json_extract(reported, '$.firmware.version'), device_id)"
    ],
}


def populate(conn: sqlite3.Connection, count: int) -> None:
    conn.executescript(DDL + JOBS_DDL)
    regions = ["us", "eu", "apac", "latam", "mea"]
    rows = []
    for i in range(count):
        reported = {
            "firmware": {"version": "9.9.9" if i % 10_000 == 5 else f"1.{i % 20}.0", "status": "current"},
            "telemetryConfig": {"sendFrequencyInSecs": 30 + i % 90, "status": "Success" if i % 7 else "Pending"},
            "battery": i % 100,
        }
        tags = {"location": {"region": regions[i % 5], "building": str(i % 43)}, "owner": f"team-{i % 12}"}
        rows.append((
            f"device-{i:06d}", "g", "e", TS, TS, TS, json.dumps(tags, separators=(",", ":")),
            json.dumps({"telemetryConfig": {"sendFrequency": "5m"}}, separators=(",", ":")),
            json.dumps(reported, separators=(",", ":")), "AAAAAAAAAAE=",
        ))
    conn.executemany(
        "INSERT INTO devices (device_id, generation_id, device_etag, status_updated_time, "
        "connection_state_updated_time, last_activity_time, tags, desired, reported, twin_etag) "
        "VALUES (?,?,?,?,?,?,?,?,?,?)",
        rows,
    )
    conn.commit()


def median_ms(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 2)


def twin_ids(conn: sqlite3.Connection, text: str) -> list[Any]:
    c = compile_query(text)
    return conn.execute(f"SELECT device_id FROM devices WHERE {c.where_sql}", c.params).fetchall()


def first_page(conn: sqlite3.Connection, text: str) -> list[Any]:
    c = compile_query(text)
    sql = f"SELECT * FROM devices WHERE ({c.where_sql}) AND device_id > ? ORDER BY device_id LIMIT ?"
    return conn.execute(sql, (*c.params, "", 101)).fetchall()


def raw_rows(conn: sqlite3.Connection, text: str) -> list[dict[str, Any]]:
    c = compile_query(text)
    return [row_to_item(c, row) for row in conn.execute(c.sql, c.params)]


def plan(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...] = ()) -> str:
    return " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))


def main(count: int, repeat: int) -> None:
    fd, path = tempfile.mkstemp(suffix=".sqlite")
    os.close(fd)
    try:
        conn = sqlite3.connect(path)
        start = time.perf_counter()
        populate(conn, count)
        result: dict[str, Any] = {
            "benchmark": "query_compiler",
            "devices": count,
            "sqlite": sqlite3.sqlite_version,
            "populate_seconds": round(time.perf_counter() - start, 2),
            # parse + compile without compile_query's cache (a query text seen for the first time)
            "compile_us": {
                "filter": round(median_ms(lambda: compile_parsed(parse_query(FILTER)), 200) * 1000, 1),
                "group_by": round(median_ms(lambda: compile_parsed(parse_query(GROUP)), 200) * 1000, 1),
                "condition": round(median_ms(lambda: compile_condition("deviceId IN ['a','b']"), 200) * 1000, 1),
                "max_length_8192": round(median_ms(lambda: compile_parsed(parse_query(_long_query())), 20) * 1000, 1),
                "cached": round(median_ms(lambda: compile_query(FILTER), 200) * 1000, 1),
            },
            "matches": {
                "filter": len(twin_ids(conn, FILTER)),
                "filter_rare": len(twin_ids(conn, FILTER_RARE)),
                "filter_and": len(twin_ids(conn, FILTER_AND)),
            },
            "groups": len(raw_rows(conn, GROUP)),
            "ms": {},
            "plans": {},
        }
        for name, ddl in INDEXES.items():
            for index in ("ix_fw", "ix_fw2", "ix_fw3"):
                conn.execute(f"DROP INDEX IF EXISTS {index}")
            for stmt in ddl:
                conn.execute(stmt)
            conn.execute("ANALYZE")
            result["ms"][name] = {
                "filter_ids": median_ms(lambda: twin_ids(conn, FILTER), repeat),
                "filter_first_page": median_ms(lambda: first_page(conn, FILTER), repeat),
                "filter_rare_ids": median_ms(lambda: twin_ids(conn, FILTER_RARE), repeat),
                "filter_rare_first_page": median_ms(lambda: first_page(conn, FILTER_RARE), repeat),
                "filter_and_ids": median_ms(lambda: twin_ids(conn, FILTER_AND), repeat),
                "group_by_count": median_ms(lambda: raw_rows(conn, GROUP), repeat),
            }
            rare, group = compile_query(FILTER_RARE), compile_query(GROUP)
            result["plans"][name] = {
                "filter": plan(conn, f"SELECT device_id FROM devices WHERE {rare.where_sql}", rare.params),
                "filter_first_page": plan(
                    conn,
                    f"SELECT * FROM devices WHERE ({rare.where_sql}) AND device_id > ? ORDER BY device_id LIMIT ?",
                    (*rare.params, "", 101),
                ),
                "group_by": plan(conn, group.sql),
            }
        conn.close()
    finally:
        os.unlink(path)
    print(json.dumps(result, indent=2))
    sys.stdout.flush()


def _long_query() -> str:
    text = "SELECT * FROM devices WHERE " + " OR ".join(f"tags.k{i} = 'v{i}'" for i in range(400))
    return text[: text.rindex(" OR ", 0, 8192)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    main(args.count, args.repeat)
