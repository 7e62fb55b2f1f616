"""Job records written in multi-row statements (issue 13) land exactly as one statement per
record did: every record its own values, more records than one statement carries, a device
twice in one call (its last record stands), on both backends."""

from __future__ import annotations

import json
from typing import Any

from iot_flows.store import open_store


async def _rows(store: Any, job_id: str) -> dict[str, str]:
    ids = []
    for status in ("pending", "running", "completed", "failed", "canceled"):
        ids += [(d, status) for d in await store.device_job_ids(job_id, status)]
    return dict(ids)


async def test_outcomes_and_running_marks_in_bulk_are_stored_per_device(make_db: Any) -> None:
    store = await open_store(make_db())
    try:
        devices = [f"dev-{i:04d}" for i in range(1234)]  # more than one statement's worth
        async with store.transaction():
            await store.add_device_jobs("job-1", "scheduleDeviceMethod", devices, "pending", "t0")
            await store.add_device_jobs("job-2", "scheduleDeviceMethod", devices[:3], "pending", "t0")
        async with store.transaction():
            await store.mark_device_jobs_running("job-1", devices[:1100], "t1")
        assert await store.device_job_counts("job-1") == {"running": 1100, "pending": 134}
        outcomes = []
        for i, d in enumerate(devices[:1100]):
            if i % 3 == 0:
                outcomes.append((d, "completed", "t1", f"e{i}", {"deviceMethodResponse": {"status": 200, "payload": i}}, None))
            elif i % 3 == 1:
                outcomes.append((d, "failed", "t1", f"e{i}", None, {"code": "GatewayTimeout", "description": str(i)}))
            else:
                outcomes.append((d, "failed", "t1", f"e{i}", {"deviceMethodResponse": {"status": 500, "payload": None}},
                                 {"code": "DeviceMethodFailed", "description": "x"}))
        outcomes += [(d, "canceled", None, "e-never", None, None) for d in devices[1100:]]
        outcomes.append((devices[0], "failed", "t1", "e-last", None, {"code": "Last", "description": "wins"}))
        async with store.transaction():
            await store.record_device_outcomes("job-1", outcomes, "t2")
        counts = await store.device_job_counts("job-1")
        assert counts == {"completed": 366, "failed": 734, "canceled": 134}, counts
        assert await store.device_job_counts("job-2") == {"pending": 3}  # another job's rows untouched
        statuses = await _rows(store, "job-1")
        assert statuses[devices[0]] == "failed" and statuses[devices[3]] == "completed"
        assert statuses[devices[1]] == "failed" and statuses[devices[1200]] == "canceled"
    finally:
        await store.close()


async def test_bulk_outcomes_keep_start_time_and_json_of_each_record(make_db: Any, backend: str) -> None:
    store = await open_store(make_db())
    try:
        async with store.transaction():
            await store.add_device_jobs("job", "scheduleDeviceMethod", ["a", "b", "c"], "pending", "t0")
            await store.mark_device_jobs_running("job", ["a", "b"], "started-ab")
            await store.record_device_outcomes("job", [
                ("a", "completed", "other", "end-a", {"deviceMethodResponse": {"status": 200, "payload": {"k": "a"}}}, None),
                ("b", "failed", "started-ab", "end-b", None, {"code": "JobTimedOut", "description": "b"}),
                ("c", "failed", None, "end-c", None, {"code": "JobTimedOut", "description": "not reached"}),
            ], "t2")
        if backend == "sqlite":
            conn = store._conn  # type: ignore[attr-defined]
            got = {r[0]: r[1:] for r in conn.execute(
                "SELECT device_id, status, start_time_utc, end_time_utc, outcome, error, last_updated_date_time_utc"
                " FROM device_jobs WHERE job_id = 'job'")}
        else:
            rows = await store._fetch(  # type: ignore[attr-defined]
                "SELECT device_id, status, start_time_utc, end_time_utc, outcome::text, error::text,"
                " last_updated_date_time_utc FROM device_jobs WHERE job_id = 'job'")
            got = {r[0]: tuple(r[1:]) for r in rows}
        a, b, c = got["a"], got["b"], got["c"]
        assert a[:3] == ("completed", "started-ab", "end-a")  # the start time marked running stands
        assert json.loads(a[3]) == {"deviceMethodResponse": {"status": 200, "payload": {"k": "a"}}} and a[4] is None
        assert b[:3] == ("failed", "started-ab", "end-b") and b[3] is None
        assert json.loads(b[4]) == {"code": "JobTimedOut", "description": "b"}
        assert c[:3] == ("failed", None, "end-c") and json.loads(c[4])["description"] == "not reached"
        assert {r[5] for r in got.values()} == {"t2"}
    finally:
        await store.close()
