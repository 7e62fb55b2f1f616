"""Every precondition Azure enforces, on every surface (docs/azure-contract.md "Preconditions").

REST twins and registry: ``If-Match`` (quoted, ``"*"`` wildcard; a mismatch, even a
malformed etag, is 412 / 412001 and stores nothing). Bulk registry: the ``*IfMatchETag``
import modes compare ``eTag`` per device. Jobs: ``updateTwin.etag`` is a per-device
``If-Match``. Device MQTT: ``&$version=`` on a reported PATCH must equal the current
reported ``$version`` (412 otherwise; Azure/azure-iot-sdk-java#1776, the MQTT 5
reference's ``if-version``).
"""

from __future__ import annotations

import uuid

import pytest

from tests.support import error_code, wait_until


def _twin(service, device_id):
    return service.request("GET", f"/twins/{device_id}").json()


# ---- REST twins -----------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["PATCH", "PUT"])
def test_twin_if_match(service, method):
    device_id = service.create_device()["deviceId"]
    etag = _twin(service, device_id)["etag"]
    body = {"tags": {"a": 1}}
    for stale in (f'"{etag}x"', '"abc"', '"AAAAAAAAAAE="'):
        r = service.request(method, f"/twins/{device_id}", json_body=body, headers={"If-Match": stale})
        assert r.status_code == 412 and error_code(r) == 412001, (stale, r.text)
        assert _twin(service, device_id)["etag"] == etag, "a failed precondition must store nothing"
    r = service.request(method, f"/twins/{device_id}", json_body=body, headers={"If-Match": f'"{etag}"'})
    assert r.status_code == 200 and r.json()["etag"] != etag
    # the etag just used is now stale
    r2 = service.request(method, f"/twins/{device_id}", json_body=body, headers={"If-Match": f'"{etag}"'})
    assert r2.status_code == 412
    assert service.request(method, f"/twins/{device_id}", json_body=body, headers={"If-Match": '"*"'}).status_code == 200
    assert service.request(method, f"/twins/{device_id}", json_body=body).status_code == 200  # no If-Match: no precondition


# ---- REST registry --------------------------------------------------------------------------
def test_registry_update_and_delete_if_match(service):
    device = service.create_device()
    device_id = device["deviceId"]
    stale = {"If-Match": '"not-the-etag"'}
    r = service.request("PUT", f"/devices/{device_id}", json_body={**device, "status": "disabled"}, headers=stale)
    assert r.status_code == 412 and error_code(r) == 412001
    assert service.request("GET", f"/devices/{device_id}").json()["status"] == "enabled"
    r = service.request("DELETE", f"/devices/{device_id}", headers=stale)
    assert r.status_code == 412 and error_code(r) == 412001
    assert service.request("GET", f"/devices/{device_id}").status_code == 200
    r = service.request("DELETE", f"/devices/{device_id}", headers={"If-Match": f'"{device["etag"]}"'})
    assert r.status_code == 204


@pytest.mark.parametrize("mode", ["updateIfMatchETag", "deleteIfMatchETag", "createOrUpdateIfMatchETag"])
def test_bulk_if_match_etag_modes(service, mode):
    device = service.create_device()
    device_id = device["deviceId"]
    item = {"id": device_id, "importMode": mode, "status": "disabled"}
    r = service.request("POST", "/devices", json_body=[{**item, "eTag": "wrong"}])
    body = r.json()
    assert r.status_code == 400 and body["isSuccessful"] is False, r.text
    assert [e["errorCode"] for e in body["errors"]] == ["PreconditionFailed"]
    after = service.request("GET", f"/devices/{device_id}")
    assert after.status_code == 200 and after.json()["status"] == "enabled"
    r = service.request("POST", "/devices", json_body=[{**item, "eTag": device["etag"]}])
    assert r.status_code == 200, r.text
    after = service.request("GET", f"/devices/{device_id}")
    if mode.startswith("delete"):
        assert after.status_code == 404
    else:
        assert after.json()["status"] == "disabled"


# ---- jobs -----------------------------------------------------------------------------------
def test_twin_job_etag_is_a_per_device_if_match(service):
    tag = uuid.uuid4().hex[:8]
    a, b = service.create_device()["deviceId"], service.create_device()["deviceId"]
    for device_id in (a, b):
        service.request("PATCH", f"/twins/{device_id}", json_body={"tags": {"pre": tag}})
    etag_a = _twin(service, a)["etag"]
    etag_b = _twin(service, b)["etag"]
    job_id = f"pre-{uuid.uuid4().hex[:10]}"
    r = service.request("PUT", f"/jobs/v2/{job_id}", json_body={
        "type": "scheduleUpdateTwin", "queryCondition": f"tags.pre = '{tag}'",
        "updateTwin": {"etag": etag_a, "properties": {"desired": {"p": 1}}}, "maxExecutionTimeInSeconds": 30})
    assert r.status_code == 200, r.text
    wait_until(lambda: service.request("GET", f"/jobs/v2/{job_id}").json()["status"] == "completed")
    records = service.request("POST", "/devices/query", json_body={
        "query": f"SELECT * FROM devices.jobs WHERE devices.jobs.jobId = '{job_id}'"}).json()
    by_device = {rec["deviceId"]: rec for rec in records}
    assert by_device[a]["status"] == "completed"
    assert by_device[b]["status"] == "failed" and by_device[b]["error"]["code"] == "PreconditionFailed"
    assert _twin(service, a)["properties"]["desired"]["p"] == 1
    assert "p" not in _twin(service, b)["properties"]["desired"] and _twin(service, b)["etag"] == etag_b


# ---- device MQTT ----------------------------------------------------------------------------
def test_reported_patch_version_precondition(devices, service):
    dev = devices()
    current = _twin(service, dev.device_id)["properties"]["reported"]["$version"]
    status, topic = dev.patch_reported({"a": 1}, topic_suffix=f"&$version={current}")
    assert status == 204 and topic.endswith(f"$version={current + 1}"), topic
    status, _ = dev.patch_reported({"b": 2}, topic_suffix=f"&$version={current}")  # stale now
    assert status == 412
    reported = _twin(service, dev.device_id)["properties"]["reported"]
    assert "b" not in reported and reported["$version"] == current + 1
    status, _ = dev.patch_reported({"b": 2}, topic_suffix="&$version=abc")
    assert status == 400
    status, _ = dev.patch_reported({"b": 2})  # no $version: no precondition
    assert status == 204
