"""``--quota``: Azure's throttles on a real hub, over REST and MQTT (docs/iothub-reference.md §3.8, §6).

The rates are IoT Hub's; a frozen clock (no refill) makes the counts exact. The hub runs
on every store backend (``TEST_STORE_BACKENDS``: SQLite and PostgreSQL).
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from collections.abc import Iterator

import httpx
import pytest

from iot_flows.hub import HubSettings
from iot_flows.hub._embedded import EmbeddedHub
from iot_flows.hub._quota import Operation, Quota
from tests.conftest import BACKENDS
from tests.support import Device, Service, error_code, wait_until


def frozen() -> float:
    return 0.0


@pytest.fixture(scope="module", params=BACKENDS)
def s1_hub(request: pytest.FixtureRequest) -> Iterator[EmbeddedHub]:
    if request.param == "postgresql":
        db = request.getfixturevalue("pg_cluster").create_database(f"quota_hub_{os.getpid()}")
    else:
        db = os.path.join(tempfile.mkdtemp(prefix="quota-hub-"), "hub.db")
    settings = HubSettings(mqtt_port=0, http_port=0, db=db, quota="s1")
    with EmbeddedHub(settings) as hub:
        yield hub


@pytest.fixture
def svc(s1_hub: EmbeddedHub) -> Iterator[Service]:
    s1_hub.hub.quota = None  # set-up requests are not throttled
    service = Service(s1_hub.base_url, s1_hub.connection_string())
    yield service
    service.close()
    s1_hub.hub.quota = Quota.for_tier("s1")


def test_serve_quota_s1_applies_s1_and_one_active_job(s1_hub: EmbeddedHub) -> None:
    hub = s1_hub.hub
    assert hub.quota is not None and hub.quota.name == "S1 x1"
    assert hub.quota.limits[Operation.TWIN_READ] == 100
    assert hub.jobs.settings.max_concurrent_jobs == 1  # docs/iothub-reference.md §6.2


def test_off_by_default(tmp_path) -> None:
    hub_settings = HubSettings(mqtt_port=0, http_port=0, db=str(tmp_path / "hub.db"))
    with EmbeddedHub(hub_settings) as hub:
        assert hub.hub.quota is None
        assert hub.hub.jobs.settings.max_concurrent_jobs == 10


def test_explicit_job_limit_wins(tmp_path) -> None:
    hub_settings = HubSettings(
        mqtt_port=0, http_port=0, db=str(tmp_path / "hub.db"), quota="s1", jobs={"max_concurrent_jobs": 3}
    )
    with EmbeddedHub(hub_settings) as hub:
        assert hub.hub.jobs.settings.max_concurrent_jobs == 3


async def _burst(base_url: str, token: str, method: str, path: str, count: int, body: object = None) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as http:
        return await asyncio.gather(
            *(
                http.request(method, f"{path}?api-version=2021-04-12", json=body, headers={"Authorization": token})
                for _ in range(count)
            )
        )


def test_s1_twin_reads_beyond_burst_and_queue_get_429001(s1_hub: EmbeddedHub, svc: Service) -> None:
    device_id = svc.create_device()["deviceId"]
    # S1: 100 twin reads/s; 1 s of burst passes at once, 1 s more is queued, then 429.
    s1_hub.hub.quota = Quota.for_tier("s1", clock=frozen)
    responses = asyncio.run(_burst(s1_hub.base_url, svc.cs.token(), "GET", f"/twins/{device_id}", 230))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 200 and statuses.count(429) == 30
    refused = next(r for r in responses if r.status_code == 429)
    assert error_code(refused) == 429001
    assert refused.headers["iothub-errorcode"] == "ThrottlingException"
    assert int(refused.headers["Retry-After"]) >= 1
    message = json.loads(refused.json()["Message"])
    assert set(message) >= {"errorCode", "trackingId", "message", "info", "timestampUtc"}
    assert s1_hub.hub.quota.throttled[Operation.TWIN_READ] == 30
    assert s1_hub.hub.quota.delayed[Operation.TWIN_READ] == 100


def test_s1_twin_updates_and_other_classes_are_separate(s1_hub: EmbeddedHub, svc: Service) -> None:
    device_id = svc.create_device()["deviceId"]
    s1_hub.hub.quota = Quota.for_tier("s1", clock=frozen, max_delay=0)
    patch = {"properties": {"desired": {"x": 1}}}
    responses = asyncio.run(_burst(s1_hub.base_url, svc.cs.token(), "PATCH", f"/twins/{device_id}", 60, patch))
    assert [r.status_code for r in responses].count(200) == 50
    assert {error_code(r) for r in responses if r.status_code != 200} == {429001}
    # Twin reads have their own bucket; the hub's own endpoints are never throttled.
    assert svc.request("GET", f"/twins/{device_id}").status_code == 200
    assert svc.http.get("/healthz").status_code == 200


def test_s1_queries_registry_and_jobs_are_throttled(s1_hub: EmbeddedHub, svc: Service) -> None:
    device_id = svc.create_device()["deviceId"]
    s1_hub.hub.quota = Quota.for_tier("s1", clock=frozen, max_delay=0)
    # 20 queries/min: one passes now, the next is refused with Retry-After 3 s.
    assert svc.request("POST", "/devices/query", json_body={"query": "SELECT * FROM devices"}).status_code == 200
    r = svc.request("POST", "/devices/query", json_body={"query": "SELECT * FROM devices"})
    assert (r.status_code, error_code(r), r.headers["Retry-After"]) == (429, 429001, "3")
    assert svc.request("GET", f"/devices/{device_id}").status_code == 200  # 100/min: 1 now
    assert svc.request("GET", f"/devices/{device_id}").status_code == 429
    assert svc.request("GET", "/jobs/v2/query").status_code == 200  # 100/min/unit
    assert error_code(svc.request("GET", "/jobs/v2/query")) == 429001


def test_direct_methods_are_metered_in_4kb_blocks(s1_hub: EmbeddedHub, svc: Service) -> None:
    device_id = svc.create_device()["deviceId"]
    s1_hub.hub.quota = Quota({Operation.DIRECT_METHOD: 40}, clock=frozen, max_delay=0)
    call = {"methodName": "m", "responseTimeoutInSeconds": 5, "payload": "x" * 80_000}  # ~20 blocks
    offline = svc.request("POST", f"/twins/{device_id}/methods", json_body=call)
    assert error_code(offline) == 404103  # admitted: the device is offline
    svc.request("POST", f"/twins/{device_id}/methods", json_body=call)
    third = svc.request("POST", f"/twins/{device_id}/methods", json_body=call)
    assert (third.status_code, error_code(third)) == (429, 429001)


def _device(hub: EmbeddedHub, svc: Service) -> Device:
    record = svc.create_device()
    key = record["authentication"]["symmetricKey"]["primaryKey"]
    return Device("127.0.0.1", hub.hub.mqtt_port, hub.hub.settings.hostname, record["deviceId"], key)


def test_device_twin_requests_get_status_429(s1_hub: EmbeddedHub, svc: Service) -> None:
    dev = _device(s1_hub, svc)
    assert dev.connect() == 0
    dev.subscribe_iothub()
    try:
        s1_hub.hub.quota = Quota({Operation.TWIN_READ: 1, Operation.TWIN_UPDATE: 1}, clock=frozen, max_delay=0)
        assert dev.get_twin()[0] == 200
        msg = dev.twin_request("$iothub/twin/GET/", b"")
        assert msg.topic.startswith("$iothub/twin/res/429/?$rid=")
        assert json.loads(msg.payload)["errorCode"] == 429001
        assert dev.patch_reported({"a": 1})[0] == 204
        status, _ = dev.patch_reported({"a": 2})
        assert status == 429
        assert dev.connected.is_set()  # throttled twin requests keep the connection
        s1_hub.hub.quota = None
        assert dev.get_twin()[1]["reported"]["a"] == 1  # the refused patch changed nothing
    finally:
        dev.disconnect()


def test_device_connects_are_shaped_then_refused_with_connack_3(s1_hub: EmbeddedHub, svc: Service) -> None:
    first, second = _device(s1_hub, svc), _device(s1_hub, svc)
    s1_hub.hub.quota = Quota({Operation.CONNECT: 1}, clock=frozen, max_delay=0)
    try:
        assert first.connect() == 0
        assert second.connect() == 136  # CONNACK 3 (server unavailable): the device retries later
    finally:
        first.disconnect()
        second.disconnect()


def test_throttled_telemetry_closes_the_connection(s1_hub: EmbeddedHub, svc: Service) -> None:
    dev = _device(s1_hub, svc)
    assert dev.connect() == 0
    s1_hub.hub.quota = Quota({Operation.D2C: 2}, clock=frozen, max_delay=0)
    try:
        for _ in range(3):
            dev.client.publish(f"devices/{dev.device_id}/messages/events/", b"{}", qos=1)
        assert wait_until(dev.disconnected.is_set, timeout=10)
    finally:
        dev.disconnect()


def test_jobs_device_operations_are_paced_not_refused(s1_hub: EmbeddedHub, svc: Service) -> None:
    tag = f"paced-{os.getpid()}-{id(svc)}"
    ids = [svc.create_device()["deviceId"] for _ in range(8)]
    for device_id in ids:
        assert svc.request("PATCH", f"/twins/{device_id}", json_body={"tags": {"site": tag}}).status_code == 200
    # Only jobs device operations are limited here (4/s, one at once): the job PUT/GETs pass.
    quota = Quota({Operation.JOB_DEVICE_OP: 4}, burst_seconds=0.25, max_delay=0)
    s1_hub.hub.quota = quota
    job_id = f"job-{tag}"
    body = {"type": "scheduleUpdateTwin", "queryCondition": f"tags.site = '{tag}'",
            "updateTwin": {"etag": "*", "tags": {"paced": True}}, "maxExecutionTimeInSeconds": 60}
    assert svc.request("PUT", f"/jobs/v2/{job_id}", json_body=body).status_code == 200

    def finished() -> dict | None:
        doc = svc.request("GET", f"/jobs/v2/{job_id}").json()
        return doc if doc["status"] in ("completed", "failed", "cancelled") else None

    doc = wait_until(finished, timeout=30, interval=0.2)
    assert doc["status"] == "completed" and doc["deviceJobStatistics"]["succeededCount"] == 8
    assert quota.delayed[Operation.JOB_DEVICE_OP] >= 6  # all but the first waited their turn


def test_hub_serve_quota_flag(tmp_path) -> None:
    from tests.support import HubProcess

    hub = HubProcess(tmp_path / "hub.db", args=("--quota", "s1"))
    try:
        svc = Service(hub.base_url, hub.connection_string)
        # S1 allows 20 queries a minute: of 10 back to back, most are refused.
        codes = [svc.request("POST", "/devices/query", json_body={"query": "SELECT * FROM devices"}).status_code
                 for _ in range(10)]
        svc.close()
        assert codes[0] == 200 and codes.count(429) >= 5, codes
    finally:
        assert hub.terminate() == 0
