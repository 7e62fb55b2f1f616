"""Every example of reference section 4.6 against a seeded store, via SQL and the oracle."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from iot_flows._exceptions import QuerySyntaxError
from iot_flows.query import compile_condition, compile_query, evaluate_condition, run_query

from ._support import as_multiset, insert_job, insert_twin, make_twin, sql_query

TWINS = [
    make_twin(
        "d1",
        lastActivityTime="2024-01-01T00:00:01Z",
        tags={"location": {"region": "US"}},
        properties={"reported": {"telemetryConfig": {"sendFrequencyInSecs": 60, "status": "Success"},
                                 "connectivity": "wired"}},
    ),
    make_twin(
        "d2",
        connectionState="Connected",
        tags={"location": {"region": "US"}},
        properties={"reported": {"telemetryConfig": {"sendFrequencyInSecs": 30, "status": "Pending"},
                                 "connectivity": "wifi"}},
    ),
    make_twin(
        "d3",
        status="disabled",
        tags={"location": {"region": "EU"}},
        properties={"reported": {"telemetryConfig": {"sendFrequencyInSecs": 120, "status": "Success"},
                                 "connectivity": "cellular"}},
    ),
    make_twin(
        "d4",
        tags={"location": {"region": "US"}},
        properties={"reported": {"telemetryConfig": {"sendFrequencyInSecs": "60", "status": "Success"},
                                 "connectivity": None}},
    ),
    make_twin("d5"),
    make_twin(
        "d6",
        tags={"location": {"region": "US"}},
        properties={"reported": {"telemetryConfig": {"sendFrequencyInSecs": 90.5, "status": "Pending"},
                                 "firmware": {"fwUpdateStatus": "current"}}},
    ),
]

JOBS = [
    {"jobId": "job1", "deviceId": "myDeviceId", "jobType": "scheduleUpdateTwin", "status": "completed",
     "startTimeUtc": "2016-09-29T18:18:52.7418462", "endTimeUtc": "2016-09-29T18:20:52.7418462",
     "createdDateTimeUtc": "2016-09-29T18:18:56.7787107Z", "lastUpdatedDateTimeUtc": "2016-09-29T18:18:56.8894408Z",
     "outcome": None},
    {"jobId": "job1", "deviceId": "other", "jobType": "scheduleUpdateTwin", "status": "completed",
     "createdDateTimeUtc": "2016-09-29T18:18:56.7787107Z", "lastUpdatedDateTimeUtc": "2016-09-29T18:18:56.8894408Z"},
    {"jobId": "myJobId", "deviceId": "myDeviceId", "jobType": "scheduleDeviceMethod", "status": "failed",
     "createdDateTimeUtc": "2016-08-01T00:00:00Z", "lastUpdatedDateTimeUtc": "2016-08-01T00:00:00Z",
     "error": {"code": "GatewayTimeout", "description": "timeout"}},
    {"jobId": "myJobId", "deviceId": "dev2", "jobType": "scheduleDeviceMethod", "status": "completed",
     "createdDateTimeUtc": "2016-09-02T00:00:00Z", "lastUpdatedDateTimeUtc": "2016-09-02T00:00:00Z",
     "outcome": {"deviceMethodResponse": {"status": 200, "payload": {}}}},
]


@pytest.fixture(scope="module")
def conn(query_db: Any) -> Any:
    """The example twins and job records, on each store backend."""
    db = query_db()
    for twin in TWINS:
        insert_twin(db, twin)
    for job in JOBS:
        insert_job(db, job)
    return db


def _oracle(text: str) -> list[Any]:
    compiled = compile_query(text)
    if compiled.item_type == "twin":
        return sorted(t["deviceId"] for t in run_query(text, TWINS))
    if compiled.item_type == "deviceJob":
        return sorted((j["jobId"], j["deviceId"]) for j in run_query(text, JOBS))
    return run_query(text, TWINS)


TWIN_EXAMPLES = [
    ("SELECT * FROM devices WHERE tags.location.region = 'US'", ["d1", "d2", "d4", "d6"]),
    (
        "SELECT * FROM devices WHERE tags.location.region = 'US' AND "
        "properties.reported.telemetryConfig.sendFrequencyInSecs >= 60",
        ["d1", "d6"],
    ),
    ("SELECT * FROM devices WHERE properties.reported.connectivity IN ['wired', 'wifi']", ["d1", "d2"]),
    ("SELECT * FROM devices WHERE is_defined(properties.reported.connectivity)", ["d1", "d2", "d3", "d4"]),
]


@pytest.mark.parametrize(("text", "expected"), TWIN_EXAMPLES)
def test_twin_filters(conn: Any, text: str, expected: list[str]) -> None:
    compiled = compile_query(text)
    assert compiled.item_type == "twin"
    assert sql_query(conn, text) == expected
    assert _oracle(text) == expected


def test_count_total(conn: Any) -> None:
    text = "SELECT COUNT() as totalNumberOfDevices FROM devices"
    assert sql_query(conn, text) == [{"totalNumberOfDevices": 6}]
    assert _oracle(text) == [{"totalNumberOfDevices": 6}]


def test_group_by_status(conn: Any) -> None:
    text = (
        "SELECT properties.reported.telemetryConfig.status AS status, COUNT() AS numberOfDevices "
        "FROM devices GROUP BY properties.reported.telemetryConfig.status"
    )
    expected = [
        {"numberOfDevices": 3, "status": "Success"},
        {"numberOfDevices": 2, "status": "Pending"},
        {"numberOfDevices": 1},  # d5 has no status: the undefined group has no "status" member
    ]
    assert as_multiset(sql_query(conn, text)) == as_multiset(expected)
    assert as_multiset(_oracle(text)) == as_multiset(expected)


def test_projection_with_case_insensitive_root_fields(conn: Any) -> None:
    text = "SELECT DeviceId, LastActivityTime FROM devices WHERE status = 'enabled' AND connectionState = 'Disconnected'"
    compiled = compile_query(text)
    assert compiled.item_type == "raw"
    assert compiled.columns == ("DeviceId", "LastActivityTime")
    got = sql_query(conn, text)
    assert sorted(i["DeviceId"] for i in got) == ["d1", "d4", "d5", "d6"]
    assert {"DeviceId": "d1", "LastActivityTime": "2024-01-01T00:00:01Z"} in got
    assert as_multiset(got) == as_multiset(_oracle(text))


def test_modules_are_rejected() -> None:
    text = "SELECT * FROM devices.modules WHERE properties.reported.status = 'scanning' AND deviceId IN ['device1', 'device2']"
    with pytest.raises(QuerySyntaxError, match=r"devices\.modules.*line 1, column 15"):
        compile_query(text)


JOB_EXAMPLES = [
    ("SELECT * FROM devices.jobs WHERE devices.jobs.deviceId = 'myDeviceId'",
     [("job1", "myDeviceId"), ("myJobId", "myDeviceId")]),
    ("SELECT * FROM devices.jobs WHERE devices.jobs.deviceId = 'myDeviceId' AND devices.jobs.jobType = "
     "'scheduleUpdateTwin' AND devices.jobs.status = 'completed' AND devices.jobs.createdTimeUtc > '2016-09-01'",
     [("job1", "myDeviceId")]),
    # Doc quirk: older revisions spell the type scheduleTwinUpdate; it parses and matches nothing.
    ("SELECT * FROM devices.jobs WHERE devices.jobs.deviceId = 'myDeviceId' AND devices.jobs.jobType = "
     "'scheduleTwinUpdate' AND devices.jobs.status = 'completed' AND devices.jobs.createdTimeUtc > '2016-09-01'",
     []),
    ("SELECT * FROM devices.jobs WHERE devices.jobs.jobId = 'myJobId'", [("myJobId", "dev2"), ("myJobId", "myDeviceId")]),
    ("SELECT * FROM devices.jobs WHERE devices.jobs.createdDateTimeUtc > '2016-09-01' AND devices.jobs.jobId = 'myJobId'",
     [("myJobId", "dev2")]),
    ("SELECT * FROM devices.jobs WHERE devices.jobs.outcome.deviceMethodResponse.status = 200", [("myJobId", "dev2")]),
    ("SELECT * FROM devices.jobs WHERE IS_DEFINED(devices.jobs.error)", [("myJobId", "myDeviceId")]),
    ("SELECT * FROM devices.jobs WHERE NOT IS_DEFINED(devices.jobs.startTimeUtc)",
     [("job1", "other"), ("myJobId", "dev2"), ("myJobId", "myDeviceId")]),
    ("SELECT * FROM devices.jobs", [("job1", "myDeviceId"), ("job1", "other"), ("myJobId", "dev2"), ("myJobId", "myDeviceId")]),
]


@pytest.mark.parametrize(("text", "expected"), JOB_EXAMPLES)
def test_job_queries(conn: Any, text: str, expected: list[tuple[str, str]]) -> None:
    compiled = compile_query(text)
    assert compiled.item_type == "deviceJob"
    assert compiled.table == "device_jobs"
    assert sql_query(conn, text) == expected
    assert _oracle(text) == expected


def test_configurations_example_parses_and_selects_nothing(conn: Any) -> None:
    # configurations.* is not stored by this hub: the path is undefined, so nothing matches.
    text = (
        "SELECT deviceId FROM devices WHERE configurations.[[firmware285]].status='Applied' "
        "AND properties.reported.firmware.fwUpdateStatus='current'"
    )
    assert sql_query(conn, text) == []
    assert _oracle(text) == []
    rest = "SELECT deviceId FROM devices WHERE properties.reported.firmware.fwUpdateStatus='current'"
    assert sql_query(conn, rest) == [{"deviceId": "d6"}] == _oracle(rest)


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("*", ["d1", "d2", "d3", "d4", "d5", "d6"]),
        ("deviceId = 'd3'", ["d3"]),
        ("deviceId IN ['d1','d5']", ["d1", "d5"]),
        ("tags.location.region = 'EU'", ["d3"]),
    ],
)
def test_job_query_conditions(conn: Any, condition: str, expected: list[str]) -> None:
    assert sql_query(conn, f"SELECT * FROM devices WHERE {condition}" if condition != "*" else "SELECT * FROM devices") == expected
    if isinstance(conn, sqlite3.Connection):
        where, params = compile_condition(condition)
        rows = conn.execute(f"SELECT device_id FROM devices WHERE {where} ORDER BY device_id", params).fetchall()
        assert [r[0] for r in rows] == expected
    assert [t["deviceId"] for t in TWINS if evaluate_condition(condition, t)] == expected


def test_star_condition_is_all() -> None:
    assert compile_condition("*") == ("1", ())
    assert compile_condition("  * ") == ("1", ())
