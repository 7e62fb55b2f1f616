"""Every retried request is safe to repeat: lost responses through a real proxy.

The proxy forwards each request to the hub (which acts on it) and, for the chosen ones,
closes the connection instead of answering, as a network failure after sending does.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from iot_flows._exceptions import (
    ConnectError,
    DeviceNotOnlineError,
    GatewayTimeoutError,
    JobAlreadyExistsError,
    TransportError,
)
from iot_flows.blocks import HubConnection
from iot_flows.client import HubClient
from iot_flows.tasks import cancel_job, create_method_job, create_twin_update_job, invoke_device_method
from tests.recording_proxy import RecordingProxy
from tests.support import Device

FAST = {"retries": 3, "retry_delay_seconds": 0.05, "retry_jitter_factor": 0}


class DropFirst:
    """Drop the response of the first ``count`` requests matching method and path prefix."""

    def __init__(self, method: str, prefix: str, count: int = 1) -> None:
        self.method, self.prefix, self.left = method, prefix, count

    def __call__(self, method: str, path: str) -> bool:
        if method == self.method and path.startswith(self.prefix) and self.left > 0:
            self.left -= 1
            return True
        return False


@pytest.fixture
def proxied(flow_hub) -> Iterator:
    proxies: list[RecordingProxy] = []

    def make(drop=lambda m, p: False) -> tuple[RecordingProxy, HubConnection]:
        proxy = RecordingProxy(flow_hub.base_url, drop)
        proxies.append(proxy)
        return proxy, HubConnection(connection_string=flow_hub.connection_string(), base_url=proxy.url)

    yield make
    for proxy in proxies:
        proxy.close()


@pytest.fixture
async def counting_device(flow_hub):
    """A connected device that counts each method invocation; ``delay`` makes it slow."""
    device_id = f"idem-{uuid.uuid4().hex[:8]}"
    async with HubClient(flow_hub.connection_string(), base_url=flow_hub.base_url) as client:
        created = await client.create_device(device_id)
    key = created["authentication"]["symmetricKey"]["primaryKey"]
    hub = flow_hub.hub
    dev = Device("127.0.0.1", hub.mqtt_port, hub.settings.hostname, device_id, key)
    assert dev.connect() == 0
    dev.subscribe_iothub()
    dev.calls = []  # type: ignore[attr-defined]
    dev.delay = 0.0  # type: ignore[attr-defined]

    def handler(name, payload):
        dev.calls.append(name)  # type: ignore[attr-defined]
        time.sleep(dev.delay)  # type: ignore[attr-defined]
        return 200, {"ran": len(dev.calls)}  # type: ignore[attr-defined]

    dev.serve_methods(handler)
    yield dev
    dev.disconnect()


# ---- jobs -----------------------------------------------------------------------------------
async def test_job_creation_whose_response_was_lost_adopts_the_job(proxied, flow_hub):
    proxy, conn = proxied(DropFirst("PUT", "/jobs/v2/"))
    job_id = f"idem-{uuid.uuid4().hex[:12]}"
    job = await create_method_job.with_options(**FAST)(conn, job_id, "noSuchMethod", "deviceId = 'nobody-idem'")
    assert job["jobId"] == job_id and job["cloudToDeviceMethod"]["methodName"] == "noSuchMethod"
    puts = proxy.requests("PUT", "/jobs/v2/")
    assert [p.status for p in puts] == [None, 409]  # the first PUT created it; its answer was lost
    twin_job = f"idem-{uuid.uuid4().hex[:12]}"
    proxy.drop = DropFirst("PUT", "/jobs/v2/")
    job = await create_twin_update_job.with_options(**FAST)(conn, twin_job, "deviceId = 'nobody-idem'", tags={"k": 1})
    assert job["jobId"] == twin_job and job["updateTwin"]["tags"] == {"k": 1}


async def test_an_existing_job_with_another_spec_is_a_conflict_not_adopted(proxied):
    proxy, conn = proxied()
    job_id = f"idem-{uuid.uuid4().hex[:12]}"
    await create_method_job.with_options(**FAST)(conn, job_id, "lockDoor", "deviceId = 'nobody-idem'")
    with pytest.raises(JobAlreadyExistsError):
        await create_method_job.with_options(**FAST)(conn, job_id, "reboot", "deviceId = 'nobody-idem'")
    with pytest.raises(JobAlreadyExistsError):
        await create_method_job.with_options(**FAST)(conn, job_id, "lockDoor", "deviceId = 'somebody-else'")
    assert len(proxy.requests("PUT", "/jobs/v2/")) == 3  # a conflict is not retried


async def test_cancel_whose_response_was_lost_returns_the_cancelled_job(proxied):
    proxy, conn = proxied()
    job_id = f"idem-{uuid.uuid4().hex[:12]}"
    start = "2099-01-01T00:00:00Z"
    async with HubClient(conn.connection_string.get_secret_value(), base_url=conn.base_url) as client:
        await client.create_job(job_id, {"type": "scheduleUpdateTwin", "queryCondition": "deviceId = 'nobody-idem'",
                                         "updateTwin": {"etag": "*", "tags": {"k": 1}}, "startTime": start})  # fmt: skip
    proxy.drop = DropFirst("POST", f"/jobs/v2/{job_id}/cancel")
    job = await cancel_job.with_options(**FAST)(conn, job_id)
    assert job["status"] == "cancelled"
    assert [p.status for p in proxy.requests("POST", f"/jobs/v2/{job_id}/cancel")] == [None, 409]


# ---- direct methods ---------------------------------------------------------------------------
async def test_a_method_whose_response_was_lost_is_not_run_twice(proxied, counting_device):
    proxy, conn = proxied(DropFirst("POST", "/twins/"))
    with pytest.raises(TransportError) as info:
        await invoke_device_method.with_options(**FAST)(conn, counting_device.device_id, "reboot", response_timeout=5)
    assert not info.value.retryable
    assert counting_device.calls == ["reboot"]
    assert len(proxy.requests("POST", "/twins/")) == 1


async def test_a_method_that_timed_out_with_504_is_not_run_twice(proxied, counting_device):
    proxy, conn = proxied()
    counting_device.delay = 6.5  # past the 5 s response timeout: the hub answers 504101
    with pytest.raises(GatewayTimeoutError) as info:
        await invoke_device_method.with_options(**FAST)(conn, counting_device.device_id, "reboot", response_timeout=5)
    assert info.value.error_code == 504101 and not info.value.retryable
    assert len(proxy.requests("POST", "/twins/")) == 1
    time.sleep(1.0)  # let the slow handler finish before the device disconnects
    assert counting_device.calls == ["reboot"]


async def test_a_method_that_never_reached_the_device_is_retried(proxied, flow_hub, counting_device):
    proxy, conn = proxied()
    async with HubClient(flow_hub.connection_string(), base_url=flow_hub.base_url) as client:
        offline = (await client.create_device(f"idem-off-{uuid.uuid4().hex[:8]}"))["deviceId"]
    with pytest.raises(DeviceNotOnlineError):
        await invoke_device_method.with_options(**FAST)(conn, offline, "reboot")
    assert len(proxy.requests("POST", "/twins/")) == 4  # 404103: 1 try + 3 retries
    refused = HubConnection(connection_string=flow_hub.connection_string(), base_url="http://127.0.0.1:9")
    with pytest.raises(ConnectError) as info:
        await invoke_device_method.with_options(**FAST)(refused, counting_device.device_id, "reboot")
    assert info.value.retryable
    assert counting_device.calls == []
