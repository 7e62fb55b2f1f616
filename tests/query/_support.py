"""Test helpers: a throw-away store database, twin/job documents and row mapping.

Twins are built complete (every root field present) so the oracle, which reads the
REST document, and SQL, which reads columns with defaults, see the same values.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any

from iot_flows.query import CompiledQuery, compile_query, row_to_item
from iot_flows.store._schema import DDL, JOBS_DDL

TS = "2024-01-01T00:00:00.0000000Z"
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode  # as the store writes JSON


def make_db(path: str = ":memory:") -> sqlite3.Connection:
    """A connection with the store schema created."""
    conn = sqlite3.connect(path)
    conn.executescript(DDL + JOBS_DDL)
    return conn


def make_twin(device_id: str, **fields: Any) -> dict[str, Any]:
    """A full REST-shaped twin; keyword arguments override fields."""
    twin: dict[str, Any] = {
        "deviceId": device_id,
        "etag": "AAAAAAAAAAE=",
        "deviceEtag": "MA==",
        "status": "enabled",
        "statusReason": None,
        "statusUpdateTime": TS,
        "connectionState": "Disconnected",
        "lastActivityTime": TS,
        "cloudToDeviceMessageCount": 0,
        "authenticationType": "sas",
        "capabilities": {"iotEdge": False},
        "version": 1,
        "tags": {},
        "properties": {"desired": {"$version": 1}, "reported": {"$version": 1}},
    }
    props = fields.pop("properties", None)
    twin.update(fields)
    if props:
        for section in ("desired", "reported"):
            if section in props:
                twin["properties"][section] = {"$version": 1, **props[section]}
    return twin


def _section(twin: dict[str, Any], name: str) -> dict[str, Any]:
    return twin.get("properties", {}).get(name, {})


def twin_row(twin: dict[str, Any]) -> dict[str, Any]:
    """A twin document as ``devices`` column values (placeholders for other NOT NULLs)."""
    desired, reported = _section(twin, "desired"), _section(twin, "reported")
    row = {
        "device_id": twin["deviceId"],
        "generation_id": "g1",
        "device_etag": twin.get("deviceEtag", "MA=="),
        "status": twin.get("status", "enabled"),
        "status_reason": twin.get("statusReason"),
        "status_updated_time": twin.get("statusUpdateTime", TS),
        "auth_type": twin.get("authenticationType", "sas"),
        "capabilities": _dumps(twin.get("capabilities", {"iotEdge": False})),
        "connection_state": twin.get("connectionState", "Disconnected"),
        "connection_state_updated_time": TS,
        "last_activity_time": twin.get("lastActivityTime", TS),
        "c2d_message_count": twin.get("cloudToDeviceMessageCount", 0),
        "tags": _dumps(twin.get("tags", {})),
        "desired": _dumps({k: v for k, v in desired.items() if not k.startswith("$")}),
        "reported": _dumps({k: v for k, v in reported.items() if not k.startswith("$")}),
        "desired_version": desired.get("$version", 1),
        "reported_version": reported.get("$version", 1),
        "twin_version": twin.get("version", 1),
        "twin_etag": twin.get("etag", "AAAAAAAAAAE="),
    }
    return row


def job_row(job: dict[str, Any]) -> tuple[Any, ...]:
    """A device-job record (reference section 3.6 shape) as ``device_jobs`` values."""
    def js(value: Any) -> str | None:
        return None if value is None else _dumps(value)

    return (
        job["jobId"], job["deviceId"], job["jobType"], job["status"], job.get("startTimeUtc"),
        job.get("endTimeUtc"), job["createdDateTimeUtc"], job["lastUpdatedDateTimeUtc"],
        js(job.get("outcome")), js(job.get("error")),
    )


def insert_twin(conn: Any, twin: dict[str, Any]) -> None:
    """Insert a twin document as a ``devices`` row."""
    if not isinstance(conn, sqlite3.Connection):
        conn.insert_twin(twin)
        return
    row = twin_row(twin)
    cols = ", ".join(row)
    marks = ", ".join("?" for _ in row)
    conn.execute(f"INSERT INTO devices ({cols}) VALUES ({marks})", tuple(row.values()))


def insert_job(conn: Any, job: dict[str, Any]) -> None:
    """Insert a device-job record (reference section 3.6 shape) into ``device_jobs``."""
    if not isinstance(conn, sqlite3.Connection):
        conn.insert_job(job)
        return
    conn.execute("INSERT INTO device_jobs VALUES (?,?,?,?,?,?,?,?,?,?)", job_row(job))


def select_sql(compiled: CompiledQuery) -> str:
    """The SQL the tests run for ``compiled``: ids (ordered) for twins and jobs, the query's own for raw."""
    if compiled.item_type == "twin":
        sql = f"SELECT device_id FROM devices WHERE {compiled.where_sql} ORDER BY device_id"
    elif compiled.item_type == "deviceJob":
        sql = f"SELECT job_id, device_id FROM device_jobs WHERE {compiled.where_sql} ORDER BY job_id, device_id"
    else:
        sql = compiled.sql
    return sql if compiled.top is None else f"{sql} LIMIT {compiled.top}"


def results(compiled: CompiledQuery, rows: Any, value: Callable[[Any], Any] = lambda v: v) -> list[Any]:
    """Rows of :func:`select_sql` as results: device ids, ``(job_id, device_id)``, or items (``value`` per column)."""
    if compiled.item_type == "twin":
        return [r[0] for r in rows]
    if compiled.item_type == "deviceJob":
        return [tuple(r) for r in rows]
    return [row_to_item(compiled, [value(v) for v in r]) for r in rows]


def execute(conn: sqlite3.Connection, compiled: CompiledQuery) -> list[Any]:
    """Run a compiled query the way the store would: ids for twins/jobs, items for raw."""
    return results(compiled, conn.execute(select_sql(compiled), compiled.params).fetchall())


def sql_query(conn: Any, text: str) -> list[Any]:
    """Compile ``text`` for the database's dialect and run it (SQLite or PostgreSQL)."""
    if not isinstance(conn, sqlite3.Connection):
        return conn.query(text)  # type: ignore[no-any-return]
    return execute(conn, compile_query(text))


def normalize(value: Any) -> Any:
    """Numbers as floats (1 and 1.0 alike), recursively, for order-free comparisons."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dict):
        return {k: normalize(v) for k, v in value.items()}
    return [normalize(v) for v in value]


def as_multiset(items: list[Any]) -> list[str]:
    """Items as a sorted list of canonical JSON strings."""
    return sorted(json.dumps(normalize(i), sort_keys=True) for i in items)
