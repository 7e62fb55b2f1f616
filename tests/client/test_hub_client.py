"""HubClient against the real hub: typed errors, If-Match, methods as data, bulk results."""

from __future__ import annotations

import uuid

import httpx
import pytest

from iot_flows._exceptions import (
    ConnectError,
    DeviceAlreadyExistsError,
    DeviceNotFoundError,
    DeviceNotOnlineError,
    PreconditionFailedError,
    UnauthorizedError,
)
from iot_flows._sas import ConnectionString
from iot_flows.client import HubClient


@pytest.fixture
async def client(embedded_hub):
    async with HubClient(embedded_hub.connection_string(), base_url=embedded_hub.base_url) as c:
        yield c


def _id():
    return f"cli-{uuid.uuid4().hex[:10]}"


async def test_registry_and_twin_roundtrip(client):
    device_id = _id()
    created = await client.create_device(device_id)
    assert created["authentication"]["symmetricKey"]["primaryKey"]
    with pytest.raises(DeviceAlreadyExistsError) as info:
        await client.create_device(device_id)
    assert info.value.error_code == 409001 and not info.value.retryable
    twin = await client.update_twin(device_id, {"tags": {"building": "43"}})
    assert twin["tags"] == {"building": "43"}
    with pytest.raises(PreconditionFailedError):
        await client.update_twin(device_id, {"tags": {"x": 1}}, etag="stale")
    twin = await client.update_twin(device_id, {"tags": {"x": 1}}, etag=twin["etag"])
    assert twin["tags"]["x"] == 1
    await client.delete_device(device_id)
    with pytest.raises(DeviceNotFoundError) as info:
        await client.get_twin(device_id)
    assert info.value.error_code == 404001


async def test_method_outcomes_are_data_and_offline_is_typed(client, devices):
    dev = devices()
    dev.serve_methods(lambda name, payload: (500, {"reason": "door jammed"}))
    result = await client.invoke_device_method(dev.device_id, "lockDoor", {"door": 1}, response_timeout=5)
    assert result.status == 500 and result.payload == {"reason": "door jammed"} and not result.succeeded
    offline = (await client.create_device(_id()))["deviceId"]
    with pytest.raises(DeviceNotOnlineError) as info:
        await client.invoke_device_method(offline, "lockDoor")
    assert info.value.error_code == 404103 and info.value.retryable


async def test_bulk_errors_are_returned_not_raised(client):
    prefix = _id()
    ok = await client.bulk_devices([{"id": f"{prefix}-1", "importMode": "create"}])
    assert ok["isSuccessful"] is True
    again = await client.bulk_devices([{"id": f"{prefix}-1", "importMode": "create"}])
    assert again["isSuccessful"] is False and again["errors"][0]["errorCode"] == "DeviceAlreadyExists"


async def test_bad_key_is_unauthorized_and_unreachable_hub_is_connect_error(embedded_hub):
    cs = ConnectionString.parse(embedded_hub.connection_string())
    bad = str(ConnectionString(host_name=cs.host_name, shared_access_key_name="iothubowner",
                               shared_access_key="AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="))
    async with HubClient(bad, base_url=embedded_hub.base_url) as client:
        with pytest.raises(UnauthorizedError) as info:
            await client.get_twin("anything")
        assert not info.value.retryable
    async with HubClient(embedded_hub.connection_string(), base_url="http://127.0.0.1:9") as client:
        with pytest.raises(ConnectError) as cinfo:
            await client.get_twin("anything")
        assert cinfo.value.retryable


async def test_token_is_cached_and_renewed(embedded_hub):
    calls = []

    async def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.headers["authorization"])
        return httpx.Response(200, json={"deviceId": "d"})

    async with HubClient(embedded_hub.connection_string(), base_url="http://x", transport=httpx.MockTransport(handler)) as client:
        calls.clear()
        await client.get_twin("d")
        await client.get_twin("d")
        assert calls[0] == calls[1]  # cached while valid
        client._token_expiry = 0  # pretend it is about to expire
        await client.get_twin("d")
        assert client._token_expiry > 0  # a new token was minted (same second: same text)
    assert calls[2].startswith("SharedAccessSignature sr=")
