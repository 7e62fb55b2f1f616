"""``get_twins`` reads many twins with ``deviceId IN [...]`` queries against an iot-flows
hub (its queries read their own writes), and by GET twin otherwise (issue 13)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from iot_flows.blocks import HubConnection
from iot_flows.client import HubClient
from iot_flows.tasks import get_twins
from tests.recording_proxy import RecordingProxy


@pytest.fixture
def proxy(flow_hub) -> Iterator[RecordingProxy]:
    p = RecordingProxy(flow_hub.base_url)
    yield p
    p.close()


async def test_twins_come_from_queries_and_see_the_write_just_made(flow_hub, proxy):
    ids = [f"ryw-{i:03d}" for i in range(250)]
    async with HubClient(flow_hub.connection_string(), base_url=flow_hub.base_url) as client:
        for device_id in ids:
            await client.create_device(device_id)
        await client.update_twin(ids[-1], {"tags": {"written": "just now"}})
    connection = HubConnection(connection_string=flow_hub.connection_string(), base_url=proxy.url)
    twins = await get_twins.fn(connection, [*ids, "ryw-missing"])
    assert set(twins) == {*ids, "ryw-missing"}
    assert twins["ryw-missing"] is None
    assert twins[ids[-1]]["tags"] == {"written": "just now"}  # read-your-writes
    assert all(twins[d]["deviceId"] == d for d in ids)
    assert len(proxy.requests("POST", "/devices/query")) == 2  # 200 ids per query
    assert proxy.requests("GET", "/twins/") == []


async def test_ids_that_need_quoting_are_read_by_get(flow_hub, proxy):
    device_id = "ryw-o'brien"
    async with HubClient(flow_hub.connection_string(), base_url=flow_hub.base_url) as client:
        await client.create_device(device_id)
    connection = HubConnection(connection_string=flow_hub.connection_string(), base_url=proxy.url)
    twins = await get_twins.fn(connection, [device_id])
    assert twins[device_id]["deviceId"] == device_id
    assert proxy.requests("POST", "/devices/query") == []
    assert len(proxy.requests("GET", "/twins/")) == 1


async def test_query_answers_carry_the_read_your_writes_marker(flow_hub):
    async with HubClient(flow_hub.connection_string(), base_url=flow_hub.base_url) as client:
        page = await client.query_page("SELECT * FROM devices")
    assert page.read_your_writes is True
