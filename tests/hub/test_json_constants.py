"""``NaN`` / ``Infinity`` are not JSON (RFC 8259 §6) though Python's parser takes them: at every
place the hub parses what a device or a service sent, they are refused (400) or, for a
direct-method reply, relayed as text; nothing stored makes a later read invalid JSON."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest

from tests.support import Service, error_code

CONSTANTS = ["NaN", "Infinity", "-Infinity"]


def _strict_json(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise AssertionError(f"{name} in a hub answer: {text[:200]}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("constant", CONSTANTS)
def test_a_reported_patch_with_a_non_json_number_is_400_and_stores_nothing(service: Service, devices: Any,
                                                                          constant: str) -> None:  # fmt: skip
    dev = devices()
    assert dev.patch_reported({"ok": 1})[0] == 204
    status, _ = dev.patch_reported(None, raw=f'{{"bad": {constant}, "ok": 2}}'.encode())
    assert status == 400
    twin = _strict_json(service.request("GET", f"/twins/{dev.device_id}").text)
    assert twin["properties"]["reported"]["ok"] == 1 and "bad" not in twin["properties"]["reported"]
    page = service.request("POST", "/devices/query", json_body={"query": "SELECT * FROM devices"})
    assert page.status_code == 200 and _strict_json(page.text)


@pytest.mark.parametrize("constant", CONSTANTS)
def test_a_service_body_with_a_non_json_number_is_400_iothubformaterror_and_stores_nothing(
    service: Service, constant: str
) -> None:
    device_id = service.create_device()["deviceId"]
    before = service.request("GET", f"/twins/{device_id}").json()
    r = service.request("PATCH", f"/twins/{device_id}", content=f'{{"tags": {{"bad": {constant}}}}}'.encode(),
                        headers={"Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 400 and error_code(r) == 400006, r.text
    assert service.request("GET", f"/twins/{device_id}").json()["etag"] == before["etag"]


def test_a_method_reply_with_a_non_json_number_is_relayed_as_text_and_job_records_stay_json(
    service: Service, devices: Any
) -> None:
    dev = devices()
    dev.serve_methods(lambda name, payload: (200, {"v": float("nan")}))  # Python's json writes NaN
    r = service.request("POST", f"/twins/{dev.device_id}/methods",
                        json_body={"methodName": "m", "responseTimeoutInSeconds": 10})  # fmt: skip
    assert r.status_code == 200 and _strict_json(r.text) == {"status": 200, "payload": '{"v": NaN}'}, r.text
    job_id = f"nan-{uuid.uuid4().hex[:8]}"
    job = service.request("PUT", f"/jobs/v2/{job_id}", json_body={
        "type": "scheduleDeviceMethod", "queryCondition": f"deviceId = '{dev.device_id}'",
        "maxExecutionTimeInSeconds": 60, "cloudToDeviceMethod": {"methodName": "m", "responseTimeoutInSeconds": 10}})
    assert job.status_code == 200, job.text
    for _ in range(200):
        status = service.request("GET", f"/jobs/v2/{job_id}").json()["status"]
        if status == "completed":
            break
        time.sleep(0.05)
    records = service.request("POST", "/devices/query", json_body={
        "query": f"SELECT * FROM devices.jobs WHERE devices.jobs.jobId = '{job_id}'"})
    assert records.status_code == 200
    (record,) = _strict_json(records.text)
    assert record["outcome"]["deviceMethodResponse"] == {"status": 200, "payload": '{"v": NaN}'}
