"""Every id HubClient puts in a URL is percent-encoded, as the official service SDKs do.

Azure device ids may contain ``- . % _ * ? ! ( ) , : = @ $ ' ;`` (docs/iothub-reference.md §1.5); job ids
are letters, digits and ``-``. Before encoding, ``delete_device("demo?x=1")`` deleted the
device ``demo`` and ``get_twin("demo%41")`` read ``demoA``.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from iot_flows._exceptions import BadRequestError, DeviceNotFoundError, HubError, JobNotFoundError
from iot_flows.client import HubClient, quote_string
from tests.support import Device

#: Every punctuation character Azure allows in a device id (docs/iothub-reference.md §1.5), minus
#: ``+ #`` which the bundled hub refuses as MQTT-unsafe.
PUNCTUATION = "-.%_*?!(),:=@$';"


@pytest.fixture
async def client(embedded_hub):
    async with HubClient(embedded_hub.connection_string(), base_url=embedded_hub.base_url) as c:
        yield c


def _tag() -> str:
    return uuid.uuid4().hex[:8]


def odd_ids(tag: str) -> list[str]:
    """Ids that an unencoded URL would send somewhere else (query, fragment, %-escape, dot segment)."""
    return [
        f"all{tag}{PUNCTUATION}AZaz09",
        f"q{tag}?x=1",
        f"pct{tag}%41",
        f"pct{tag}%2F..%2e",
        f"hash{tag}%23frag",
        f"{tag}'quote'$@:=,;(!)*",
        f"end{tag}%",
        ".",
        "..",
    ]


async def test_the_reported_inputs_no_longer_reach_another_device(client):
    tag = _tag()
    demo, demo_a = f"demo{tag}", f"demo{tag}A"
    await client.create_device(demo)
    await client.create_device(demo_a)
    await client.update_twin(demo, {"tags": {"who": "demo"}})
    with pytest.raises(DeviceNotFoundError):
        await client.delete_device(f"{demo}?x=1")
    with pytest.raises(DeviceNotFoundError):
        await client.get_twin(f"{demo}%41")
    with pytest.raises(DeviceNotFoundError):
        await client.update_twin(f"{demo}?x=1", {"tags": {"who": "intruder"}})
    assert (await client.get_twin(demo))["tags"] == {"who": "demo"}  # still there, unpatched
    assert (await client.get_device(demo_a))["deviceId"] == demo_a
    await client.delete_device(demo)
    await client.delete_device(demo_a)


async def test_every_allowed_character_round_trips_through_every_device_method(client, embedded_hub):
    tag = _tag()
    for device_id in odd_ids(tag):
        if device_id in (".", ".."):
            continue  # covered below: they exist only once per hub
        await _round_trip(client, embedded_hub, device_id)


async def test_dot_segments_are_ids_not_path_navigation(client, embedded_hub):
    for device_id in (".", ".."):
        try:
            await client.delete_device(device_id)
        except DeviceNotFoundError:
            pass
        await _round_trip(client, embedded_hub, device_id)


async def _round_trip(client: HubClient, embedded_hub, device_id: str) -> None:
    created = await client.create_device(device_id)
    assert created["deviceId"] == device_id
    assert (await client.get_device(device_id))["deviceId"] == device_id
    device = await client.get_device(device_id)
    device["status"] = "disabled"
    assert (await client.update_device(device))["status"] == "disabled"
    device = await client.get_device(device_id)
    device["status"] = "enabled"
    await client.update_device(device, etag=device["etag"])
    twin = await client.update_twin(device_id, {"tags": {"id": device_id}})
    assert twin["deviceId"] == device_id and twin["tags"] == {"id": device_id}
    twin = await client.replace_twin(device_id, {"tags": {"id": device_id, "again": 1}}, etag=twin["etag"])
    assert twin["tags"] == {"id": device_id, "again": 1}
    assert (await client.get_twin(device_id))["tags"]["again"] == 1
    found = await client.query_all(f"SELECT deviceId FROM devices WHERE deviceId = {quote_string(device_id)}")
    assert found == [{"deviceId": device_id}]
    bulk = await client.bulk_devices([{"id": device_id, "importMode": "update", "status": "enabled",
                                       "authentication": created["authentication"]}])  # fmt: skip
    assert bulk["isSuccessful"] is True, bulk

    # A direct method reaches the device with exactly this id (MQTT topics carry it unencoded).
    key = created["authentication"]["symmetricKey"]["primaryKey"]
    hub = embedded_hub.hub
    dev = Device("127.0.0.1", hub.mqtt_port, hub.settings.hostname, device_id, key)
    assert dev.connect() == 0
    try:
        dev.subscribe_iothub()
        dev.serve_methods(lambda name, payload: (200, {"me": device_id, "payload": payload}))
        result = await client.invoke_device_method(device_id, "whoami", {"x": 1}, response_timeout=5)
        assert result.status == 200 and result.payload == {"me": device_id, "payload": {"x": 1}}

        # Jobs select the device through a quoted condition; the job id goes in the path.
        job_id = f"Job-AZaz09-{uuid.uuid4().hex[:12]}"
        condition = f"deviceId = {quote_string(device_id)}"
        job = await client.create_job(job_id, {
            "type": "scheduleDeviceMethod", "queryCondition": condition, "maxExecutionTimeInSeconds": 60,
            "cloudToDeviceMethod": {"methodName": "whoami", "payload": None, "responseTimeoutInSeconds": 5},
        })  # fmt: skip
        assert job["jobId"] == job_id
        done = await _wait_job(client, job_id)
        assert done["status"] == "completed", done
        records = await client.query_device_jobs(job_id)
        assert [r["deviceId"] for r in records] == [device_id]
        listed = await client.query_jobs(job_type="scheduleDeviceMethod", job_status="completed")
        assert job_id in {j["jobId"] for j in listed}
    finally:
        dev.disconnect()
    await client.delete_device(device_id)
    with pytest.raises(DeviceNotFoundError):
        await client.get_device(device_id)


async def _wait_job(client: HubClient, job_id: str, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = await client.get_job(job_id)
        if job["status"] in ("completed", "failed", "cancelled") or time.monotonic() > deadline:
            return job
        await asyncio.sleep(0.1)


async def test_job_ids_are_encoded_and_never_reach_another_job(client):
    job_id = f"Job-AZaz09-{uuid.uuid4().hex[:12]}"
    spec = {"type": "scheduleUpdateTwin", "queryCondition": "deviceId = 'no-such-device-xyz'",
            "updateTwin": {"etag": "*", "tags": {"k": 1}}, "startTime": "2099-01-01T00:00:00Z",
            "maxExecutionTimeInSeconds": 60}  # fmt: skip
    await client.create_job(job_id, spec)
    assert (await client.get_job(job_id))["jobId"] == job_id
    for other in (f"{job_id}?x=1", f"{job_id}#x", f"{job_id}%2F", f"{job_id}%3Fx"):
        with pytest.raises((JobNotFoundError, BadRequestError)):
            await client.get_job(other)
        with pytest.raises((JobNotFoundError, BadRequestError)):
            await client.cancel_job(other)
        with pytest.raises(BadRequestError):  # the hub names the bad job id; it does not create job_id
            await client.create_job(other, spec)
    # "/" is no id character anywhere: the server decodes %2F before routing, so the request
    # lands on no route (404/405), never on job_id's.
    for other in (f"{job_id}/cancel", f"{job_id}/x"):
        for call in (client.get_job(other), client.cancel_job(other), client.create_job(other, spec)):
            with pytest.raises(HubError):
                await call
    assert (await client.get_job(job_id))["status"] not in ("cancelled",)
    assert (await client.cancel_job(job_id))["status"] == "cancelled"
