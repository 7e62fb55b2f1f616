"""The job status vocabulary as Azure's SDKs read it (docs/azure-contract.md "Job status").

* PUT answers ``queued`` for a job that has not started, also one scheduled an hour ahead
  (the Node service SDK's job tests assert it; docs/iothub-reference.md §9.6).
* GET and query show ``scheduled`` until ``startTime`` (D-JOBS), then ``running`` and a
  terminal ``completed | failed | cancelled``; device records use ``canceled``.
* ``jobStatus`` / ``jobType`` filters take Azure's spellings (any case; ``enqueued`` is
  the swagger's synonym of ``queued``, ``canceled`` the docs' spelling of ``cancelled``);
  anything else is 400, never a silently empty list.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tests.support import error_code, wait_until

JOB_STATUSES = {"queued", "scheduled", "running", "completed", "failed", "cancelled"}


def _job_id() -> str:
    return f"st-{uuid.uuid4().hex[:12]}"


def _iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def _twin_job(device_id: str, start: datetime | None = None) -> dict:
    body = {"type": "scheduleUpdateTwin", "queryCondition": f"deviceId = '{device_id}'",
            "updateTwin": {"etag": "*", "tags": {"status": "test"}}, "maxExecutionTimeInSeconds": 30}
    if start is not None:
        body["startTime"] = _iso(start)
    return body


def _query(service, **params) -> list[dict]:
    qs = "&".join(f"{k}={v}" for k, v in params.items())
    r = service.request("GET", f"/jobs/v2/query?{qs}")
    assert r.status_code == 200, r.text
    return r.json()


def test_put_says_queued_for_a_job_scheduled_an_hour_ahead(service):
    """The issue's input: startTime one hour ahead; the PUT answer must say ``queued``."""
    device_id = service.create_device()["deviceId"]
    job_id = _job_id()
    r = service.request("PUT", f"/jobs/v2/{job_id}", json_body=_twin_job(device_id, datetime.now(UTC) + timedelta(hours=1)))
    try:
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "queued"
        got = service.request("GET", f"/jobs/v2/{job_id}").json()
        assert got["status"] == "scheduled"
        assert job_id in {j["jobId"] for j in _query(service, jobStatus="scheduled")}
    finally:
        service.request("POST", f"/jobs/v2/{job_id}/cancel")
    assert service.request("GET", f"/jobs/v2/{job_id}").json()["status"] == "cancelled"
    assert job_id in {j["jobId"] for j in _query(service, jobStatus="canceled")}  # the docs' spelling
    assert job_id in {j["jobId"] for j in _query(service, jobStatus="Cancelled")}


def test_put_says_queued_for_a_job_starting_now_and_it_completes(service):
    device_id = service.create_device()["deviceId"]
    job_id = _job_id()
    r = service.request("PUT", f"/jobs/v2/{job_id}", json_body=_twin_job(device_id))
    assert r.status_code == 200 and r.json()["status"] == "queued", r.text
    done = wait_until(lambda: (j := service.request("GET", f"/jobs/v2/{job_id}").json())["status"] == "completed" and j)
    assert done["deviceJobStatistics"]["succeededCount"] == 1
    assert job_id in {j["jobId"] for j in _query(service, jobStatus="completed", jobType="scheduleUpdateTwin")}
    assert job_id in {j["jobId"] for j in _query(service, jobType="SCHEDULEUPDATETWIN")}


def test_every_status_served_is_in_azures_vocabulary(service):
    device_id = service.create_device()["deviceId"]
    ids = [_job_id(), _job_id()]
    service.request("PUT", f"/jobs/v2/{ids[0]}", json_body=_twin_job(device_id))
    service.request("PUT", f"/jobs/v2/{ids[1]}", json_body=_twin_job(device_id, datetime.now(UTC) + timedelta(hours=1)))
    try:
        for job in _query(service):
            assert job["status"] in JOB_STATUSES, job
        r = service.request("POST", "/devices/query", json_body={"query": "SELECT * FROM devices.jobs"})
        for record in r.json():
            assert record["status"] in {"pending", "scheduled", "running", "completed", "failed", "canceled"}, record
    finally:
        service.request("POST", f"/jobs/v2/{ids[1]}/cancel")


def test_enqueued_is_a_synonym_of_queued(service):
    assert _query(service, jobStatus="enqueued") == _query(service, jobStatus="queued")


@pytest.mark.parametrize("params", [{"jobStatus": "finished"}, {"jobStatus": "nonsense"}, {"jobType": "scheduleTwinUpdate"},
                                    {"jobType": "export"}])
def test_unknown_filter_values_are_400(service, params):
    qs = "&".join(f"{k}={v}" for k, v in params.items())
    r = service.request("GET", f"/jobs/v2/query?{qs}")
    assert r.status_code == 400 and error_code(r) == 400004, r.text
