"""Jobs against a real hub with real MQTT devices: targeting, outcomes, schedule, cancel, limits."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from iot_flows.hub import HubSettings
from iot_flows.hub._embedded import EmbeddedHub
from iot_flows.jobs import JobSettings
from tests.support import Device, Service, error_code, wait_until


@pytest.fixture(scope="module")
def jobs_hub(make_db):
    """A hub with small fan-out limits, so cancellation and timeouts are observable."""
    settings = HubSettings(mqtt_port=0, http_port=0, db=make_db(),
                           jobs=JobSettings(max_concurrent_jobs=3, device_concurrency=2, batch_size=2))
    with EmbeddedHub(settings) as hub:
        yield hub


@pytest.fixture(scope="module")
def svc(jobs_hub):
    s = Service(jobs_hub.base_url, jobs_hub.connection_string())
    yield s
    s.close()


@pytest.fixture
def fleet(jobs_hub, svc):
    made: list[Device] = []

    def make(n, tags, handler=None, connect=True):
        out = []
        for _ in range(n):
            record = svc.create_device()
            svc.request("PATCH", f"/twins/{record['deviceId']}", json_body={"tags": tags})
            dev = Device("127.0.0.1", jobs_hub.hub.mqtt_port, jobs_hub.hub.settings.hostname, record["deviceId"],
                         record["authentication"]["symmetricKey"]["primaryKey"])
            dev.calls = []  # type: ignore[attr-defined]
            if connect:
                assert dev.connect() == 0
                dev.subscribe_iothub()

                def serve(name, payload, dev=dev):
                    dev.calls.append((name, payload))  # type: ignore[attr-defined]
                    return handler(name, payload) if handler else (200, {"ok": True})

                dev.serve_methods(serve)
            made.append(dev)
            out.append(dev)
        return out

    yield make
    for dev in made:
        try:
            dev.disconnect()
        except Exception:
            pass


def _job_id():
    return f"job-{uuid.uuid4().hex[:12]}"


def _wait_job(svc, job_id, states=("completed", "failed", "cancelled"), timeout=30):
    def done():
        body = svc.request("GET", f"/jobs/v2/{job_id}").json()
        return body if body["status"] in states else None

    return wait_until(done, timeout=timeout, interval=0.05)


def _device_jobs(svc, job_id):
    r = svc.request("POST", "/devices/query", json_body={"query": f"SELECT * FROM devices.jobs WHERE devices.jobs.jobId = '{job_id}'"})
    assert r.status_code == 200 and r.headers["x-ms-item-type"] == "deviceJob"
    return {item["deviceId"]: item for item in r.json()}


def test_method_job_reaches_exactly_the_matching_devices(svc, fleet):
    building = uuid.uuid4().hex[:6]
    inside = fleet(4, {"building": building})
    outside = fleet(2, {"building": "elsewhere"})
    job_id = _job_id()
    r = svc.request("PUT", f"/jobs/v2/{job_id}", json_body={
        "type": "scheduleDeviceMethod", "queryCondition": f"tags.building = '{building}'",
        "cloudToDeviceMethod": {"methodName": "lockDoor", "payload": {"door": "front"}, "responseTimeoutInSeconds": 10},
        "maxExecutionTimeInSeconds": 60})
    assert r.status_code == 200, r.text
    assert r.json()["status"] in ("queued", "running", "completed")
    job = _wait_job(svc, job_id)
    assert job["status"] == "completed"
    assert job["deviceJobStatistics"]["deviceCount"] == 4 and job["deviceJobStatistics"]["succeededCount"] == 4
    assert job["endTime"] and job["createdTime"] and job["cloudToDeviceMethod"]["methodName"] == "lockDoor"
    for dev in inside:
        assert dev.calls == [("lockDoor", {"door": "front"})]
    for dev in outside:
        assert dev.calls == []
    records = _device_jobs(svc, job_id)
    assert set(records) == {d.device_id for d in inside}
    for rec in records.values():
        assert rec["status"] == "completed" and rec["jobType"] == "scheduleDeviceMethod"
        assert rec["outcome"] == {"deviceMethodResponse": {"status": 200, "payload": {"ok": True}}}
        assert rec["startTimeUtc"] and rec["endTimeUtc"] and rec["createdDateTimeUtc"] and rec["lastUpdatedDateTimeUtc"]
    # query by deviceId and status too
    one = inside[0].device_id
    r = svc.request("POST", "/devices/query", json_body={
        "query": f"SELECT * FROM devices.jobs WHERE devices.jobs.deviceId = '{one}' AND devices.jobs.status = 'completed'"})
    assert [i["jobId"] for i in r.json()] == [job_id]


def test_failures_and_offline_devices_are_recorded(svc, fleet):
    tag = uuid.uuid4().hex[:6]
    failing = fleet(1, {"t": tag}, handler=lambda n, p: (500, {"err": "jammed"}))[0]
    offline = fleet(1, {"t": tag}, connect=False)[0]
    job_id = _job_id()
    svc.request("PUT", f"/jobs/v2/{job_id}", json_body={
        "type": "scheduleDeviceMethod", "queryCondition": f"tags.t = '{tag}'",
        "cloudToDeviceMethod": {"methodName": "reboot", "responseTimeoutInSeconds": 5}})
    job = _wait_job(svc, job_id)
    assert job["status"] == "completed" and job["deviceJobStatistics"]["failedCount"] == 2
    records = _device_jobs(svc, job_id)
    assert records[failing.device_id]["outcome"]["deviceMethodResponse"] == {"status": 500, "payload": {"err": "jammed"}}
    assert records[offline.device_id]["error"]["code"] == "DeviceNotOnline"


def test_unanswered_call_fails_the_device_with_gateway_timeout(svc, fleet):
    tag = uuid.uuid4().hex[:6]
    mute = fleet(1, {"u": tag}, handler=lambda n, p: (time.sleep(7), (200, None))[1])[0]
    quick = fleet(1, {"u": tag})[0]
    job_id = _job_id()
    svc.request("PUT", f"/jobs/v2/{job_id}", json_body={
        "type": "scheduleDeviceMethod", "queryCondition": f"tags.u = '{tag}'",
        "cloudToDeviceMethod": {"methodName": "reboot", "responseTimeoutInSeconds": 5}})
    job = _wait_job(svc, job_id, timeout=20)
    assert job["status"] == "completed", job
    assert job["deviceJobStatistics"]["failedCount"] == 1 and job["deviceJobStatistics"]["succeededCount"] == 1
    records = _device_jobs(svc, job_id)
    assert records[mute.device_id]["status"] == "failed" and records[mute.device_id]["outcome"] is None
    assert records[mute.device_id]["error"] == {
        "code": "GatewayTimeout", "description": "Timed out waiting for the response from device."}
    assert records[quick.device_id]["status"] == "completed"


def test_statistics_of_a_running_job_match_its_stored_records(svc, fleet):
    tag = uuid.uuid4().hex[:6]
    fleet(3, {"st": tag})
    fleet(1, {"st": tag}, handler=lambda n, p: (time.sleep(2.5), (500, None))[1])
    fleet(1, {"st": tag}, connect=False)
    job_id = _job_id()
    svc.request("PUT", f"/jobs/v2/{job_id}", json_body={
        "type": "scheduleDeviceMethod", "queryCondition": f"tags.st = '{tag}'",
        "cloudToDeviceMethod": {"methodName": "slow", "responseTimeoutInSeconds": 10}})

    def stored() -> dict[str, int]:
        records = _device_jobs(svc, job_id).values()
        return {s: sum(1 for r in records if r["status"] == s) for s in ("completed", "failed", "running", "pending")}

    wait_until(lambda: svc.request("GET", f"/jobs/v2/{job_id}").json()["deviceJobStatistics"]["succeededCount"] == 3)
    job = svc.request("GET", f"/jobs/v2/{job_id}").json()
    assert job["status"] == "running"
    assert job["deviceJobStatistics"] == {"deviceCount": 5, "succeededCount": 3, "failedCount": 1, "runningCount": 1,
                                          "pendingCount": 0, "canceledCount": 0}
    assert stored() == {"completed": 3, "failed": 1, "running": 1, "pending": 0}
    listed = [j for j in svc.request("GET", "/jobs/v2/query").json() if j["jobId"] == job_id]
    assert listed[0]["deviceJobStatistics"] == job["deviceJobStatistics"]
    job = _wait_job(svc, job_id)
    assert job["status"] == "completed"
    assert job["deviceJobStatistics"] == {"deviceCount": 5, "succeededCount": 3, "failedCount": 2, "runningCount": 0,
                                          "pendingCount": 0, "canceledCount": 0}
    assert stored() == {"completed": 3, "failed": 2, "running": 0, "pending": 0}


def test_twin_update_job_changes_exactly_matching_devices_and_pushes_patch(svc, fleet):
    tag = uuid.uuid4().hex[:6]
    inside = fleet(3, {"site": tag})
    outside = fleet(1, {"site": "other"})
    offline = fleet(1, {"site": tag}, connect=False)[0]
    job_id = _job_id()
    r = svc.request("PUT", f"/jobs/v2/{job_id}", json_body={
        "type": "scheduleUpdateTwin", "queryCondition": f"tags.site = '{tag}'",
        "updateTwin": {"etag": "*", "properties": {"desired": {"Building": "43", "Floor": "3"}, "reported": {}}}})
    assert r.status_code == 200, r.text
    job = _wait_job(svc, job_id)
    assert job["status"] == "completed" and job["deviceJobStatistics"]["succeededCount"] == 4
    for dev in inside:
        msg = dev.wait_message(lambda m: m.topic.startswith("$iothub/twin/PATCH/properties/desired/"))
        assert b'"Building":"43"' in msg.payload
    for dev in inside + [offline]:
        assert svc.request("GET", f"/twins/{dev.device_id}").json()["properties"]["desired"]["Floor"] == "3"
    assert "Floor" not in svc.request("GET", f"/twins/{outside[0].device_id}").json()["properties"]["desired"]
    assert all(rec["outcome"] is None for rec in _device_jobs(svc, job_id).values())


def test_scheduled_start(svc, fleet):
    tag = uuid.uuid4().hex[:6]
    dev = fleet(1, {"s": tag})[0]
    start = datetime.now(UTC) + timedelta(seconds=2)
    job_id = _job_id()
    r = svc.request("PUT", f"/jobs/v2/{job_id}", json_body={
        "type": "scheduleDeviceMethod", "queryCondition": f"tags.s = '{tag}'",
        "startTime": start.isoformat().replace("+00:00", "Z"),
        "cloudToDeviceMethod": {"methodName": "reboot"}})
    assert r.json()["status"] == "queued"  # docs/iothub-reference.md §9.6: the PUT answer of a job not started
    time.sleep(0.5)
    assert dev.calls == [] and svc.request("GET", f"/jobs/v2/{job_id}").json()["status"] == "scheduled"
    job = _wait_job(svc, job_id)
    assert job["status"] == "completed" and dev.calls and datetime.now(UTC) >= start


def test_cancel_scheduled_and_running_jobs(svc, fleet):
    tag = uuid.uuid4().hex[:6]
    slow = fleet(6, {"c": tag}, handler=lambda n, p: (time.sleep(1.0), (200, None))[1])
    job_id = _job_id()
    svc.request("PUT", f"/jobs/v2/{job_id}", json_body={
        "type": "scheduleDeviceMethod", "queryCondition": f"tags.c = '{tag}'",
        "cloudToDeviceMethod": {"methodName": "slow", "responseTimeoutInSeconds": 10}})
    wait_until(lambda: sum(len(d.calls) for d in slow) >= 1)
    r = svc.request("POST", f"/jobs/v2/{job_id}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    time.sleep(2.5)
    stats = svc.request("GET", f"/jobs/v2/{job_id}").json()["deviceJobStatistics"]
    assert stats["canceledCount"] >= 2, stats
    assert stats["runningCount"] == 0 and stats["pendingCount"] == 0
    assert sum(len(d.calls) for d in slow) == stats["succeededCount"]  # canceled devices were never called
    again = svc.request("POST", f"/jobs/v2/{job_id}/cancel")
    assert again.status_code == 409

    future = _job_id()
    svc.request("PUT", f"/jobs/v2/{future}", json_body={
        "type": "scheduleDeviceMethod", "queryCondition": f"tags.c = '{tag}'",
        "startTime": (datetime.now(UTC) + timedelta(hours=1)).isoformat(), "cloudToDeviceMethod": {"methodName": "x"}})
    assert svc.request("POST", f"/jobs/v2/{future}/cancel").json()["status"] == "cancelled"


def test_max_execution_time_ends_the_job(svc, fleet):
    tag = uuid.uuid4().hex[:6]
    fleet(4, {"m": tag}, handler=lambda n, p: (time.sleep(3), (200, None))[1])
    job_id = _job_id()
    started = time.monotonic()
    svc.request("PUT", f"/jobs/v2/{job_id}", json_body={
        "type": "scheduleDeviceMethod", "queryCondition": f"tags.m = '{tag}'", "maxExecutionTimeInSeconds": 1,
        "cloudToDeviceMethod": {"methodName": "slow", "responseTimeoutInSeconds": 10}})
    job = _wait_job(svc, job_id, timeout=15)
    assert time.monotonic() - started < 5
    assert job["status"] == "failed" and "maxExecutionTimeInSeconds" in job["failureReason"]
    records = _device_jobs(svc, job_id)
    assert {r["status"] for r in records.values()} == {"failed"}
    assert {r["error"]["code"] for r in records.values()} == {"JobTimedOut"}


def test_wait_for_offline_devices_extension(jobs_hub, svc, fleet):
    tag = uuid.uuid4().hex[:6]
    late = fleet(1, {"w": tag}, connect=False)[0]
    job_id = _job_id()
    svc.request("PUT", f"/jobs/v2/{job_id}", json_body={
        "type": "scheduleDeviceMethod", "queryCondition": f"tags.w = '{tag}'", "waitForOfflineDevices": True,
        "maxExecutionTimeInSeconds": 20, "cloudToDeviceMethod": {"methodName": "hello"}})
    time.sleep(0.5)
    assert svc.request("GET", f"/jobs/v2/{job_id}").json()["status"] == "running"
    late.serve_methods(lambda n, p: (200, "hi"))  # ready before the request can arrive
    assert late.connect() == 0
    late.subscribe_iothub()
    job = _wait_job(svc, job_id)
    assert job["status"] == "completed" and job["deviceJobStatistics"]["succeededCount"] == 1, (job, _device_jobs(svc, job_id))


def test_job_request_validation_and_limits(svc, fleet):
    job_id = _job_id()
    body = {"type": "scheduleDeviceMethod", "queryCondition": "*", "cloudToDeviceMethod": {"methodName": "x"},
            "startTime": (datetime.now(UTC) + timedelta(hours=1)).isoformat()}
    assert svc.request("PUT", f"/jobs/v2/{job_id}", json_body=body).status_code == 200
    dup = svc.request("PUT", f"/jobs/v2/{job_id}", json_body=body)
    assert dup.status_code == 409 and error_code(dup) == 409104
    bad_type = svc.request("PUT", f"/jobs/v2/{_job_id()}", json_body={**body, "type": "scheduleTwinUpdate"})
    assert bad_type.status_code == 400
    bad_query = svc.request("PUT", f"/jobs/v2/{_job_id()}", json_body={**body, "queryCondition": "tags.x = = 1"})
    assert bad_query.status_code == 400 and "column" in bad_query.json()["Message"]
    assert svc.request("PUT", "/jobs/v2/bad_id!", json_body=body).status_code == 400
    assert svc.request("PUT", f"/jobs/v2/{'x' * 65}", json_body=body).status_code == 400
    no_etag = {"type": "scheduleUpdateTwin", "queryCondition": "*", "updateTwin": {"properties": {"desired": {"a": 1}}}}
    assert svc.request("PUT", f"/jobs/v2/{_job_id()}", json_body=no_etag).status_code == 400
    missing = svc.request("GET", f"/jobs/v2/{_job_id()}")
    assert missing.status_code == 404 and error_code(missing) == 404002
    # active-job limit (3 on this hub): two more scheduled jobs fill it, the next is 429004
    ids = [_job_id(), _job_id()]
    for jid in ids:
        assert svc.request("PUT", f"/jobs/v2/{jid}", json_body=body).status_code == 200
    over = svc.request("PUT", f"/jobs/v2/{_job_id()}", json_body=body)
    assert over.status_code == 429 and error_code(over) == 429004
    for jid in [job_id, *ids]:
        svc.request("POST", f"/jobs/v2/{jid}/cancel")
    listed = svc.request("GET", "/jobs/v2/query?jobType=scheduleDeviceMethod&jobStatus=cancelled")
    assert {job_id, *ids} <= {j["jobId"] for j in listed.json()}
    page = svc.request("GET", "/jobs/v2/query?jobStatus=cancelled", headers={"x-ms-max-item-count": "1"})
    assert len(page.json()) == 1 and page.headers.get("x-ms-continuation")
