"""Bulk provisioning sends only import modes the 2021-04-12 bulk API lists (create, update).

``createOrUpdate`` is not in the bulk API's models (the C# SDK refuses it for bulk calls):
provisioning creates, then resends the ``DeviceAlreadyExists`` failures as ``update``.
"""

from __future__ import annotations

import uuid

import pytest

from iot_flows._sas import ConnectionString
from iot_flows.client import HubClient
from iot_flows.device import derive_device_key, provision_devices
from tests.recording_proxy import RecordingProxy

BULK_MODES = {"create", "update", "updateIfMatchETag", "delete", "deleteIfMatchETag", "updateTwin", "updateTwinIfMatchETag"}


@pytest.fixture
def proxy(embedded_hub):
    p = RecordingProxy(embedded_hub.base_url)
    yield p
    p.close()


def _modes(proxy: RecordingProxy) -> list[list[str]]:
    return [[item["importMode"] for item in s.body] for s in proxy.requests("POST", "/devices?")]


async def test_provisioning_creates_then_updates_existing_ids(embedded_hub, proxy):
    prefix = f"prov-{uuid.uuid4().hex[:8]}"
    first = [f"{prefix}-{i:03d}" for i in range(150)]
    await provision_devices(embedded_hub.connection_string(), first, base_url=proxy.url)
    assert _modes(proxy) and all(set(m) == {"create"} for m in _modes(proxy))

    # Re-provision the same devices plus new ones: the existing ids are updated, keys unchanged.
    proxy.seen.clear()
    both = first[100:] + [f"{prefix}-new-{i}" for i in range(20)]
    async with HubClient(embedded_hub.connection_string(), base_url=embedded_hub.base_url) as client:
        device = await client.get_device(first[120])
        device["authentication"]["symmetricKey"]["primaryKey"] = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
        await client.update_device(device)  # a stale key that provisioning must rewrite
        await provision_devices(embedded_hub.connection_string(), both, base_url=proxy.url)
        modes = _modes(proxy)
        assert all(set(m) <= BULK_MODES for m in modes), modes
        assert sorted(len(m) for m in modes) == [50, 70]  # 70 created (50 of them exist), 50 updated
        updated = [s for s in proxy.requests("POST", "/devices?") if s.body[0]["importMode"] == "update"]
        assert {item["id"] for item in updated[0].body} == set(first[100:])
        key = ConnectionString.parse(embedded_hub.connection_string()).shared_access_key
        record = await client.get_device(first[120])
        assert record["authentication"]["symmetricKey"]["primaryKey"] == derive_device_key(key, first[120])
        assert (await client.get_device(both[-1]))["status"] == "enabled"
