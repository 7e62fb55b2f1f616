"""One rule decides the installed firmware version, in flows (twins) and jobs (query conditions).

``update_firmware`` read ``firmware.version`` / ``iothubDM.firmwareVersion`` while the rollout
read three paths in another order and selected devices by ``firmware.version`` alone: a
device following Azure's firmware convention (``firmware.currentFwVersion`` only,
docs/iothub-reference.md §7.4) never confirmed an update.
"""

from __future__ import annotations

import uuid

import pytest

from iot_flows.client import HubClient, quote_string
from iot_flows.device import BehaviourConfig
from iot_flows.flows._firmware import installed_version, not_on_version_condition
from iot_flows.flows.device_management import FirmwareUpdateRequest, update_firmware
from tests.flows.conftest import make_fleet
from tests.support import Device

#: reported properties -> the installed version by the rule.
SHAPES: list[tuple[dict, str | None]] = [
    ({"firmware": {"currentFwVersion": "2.0"}}, "2.0"),  # Azure firmware tutorial (docs/iothub-reference.md §7.4)
    ({"iothubDM": {"firmwareVersion": "2.0"}}, "2.0"),  # C SDK DM sample (docs/iothub-reference.md §7.3)
    ({"firmware": {"version": "2.0"}}, "2.0"),  # simulator alias
    ({"firmware": {"currentFwVersion": "1.0", "version": "2.0"}}, "1.0"),  # first path wins
    ({"firmware": {"currentFwVersion": "", "version": "2.0"}}, "2.0"),  # "" is not set
    ({"iothubDM": {"firmwareVersion": "1.0"}, "firmware": {"version": "2.0"}}, "1.0"),
    ({"firmware": {"pendingFwVersion": "2.0"}}, None),  # pending is not installed
    ({}, None),
]


async def _device(hub, client: HubClient, device_id: str) -> Device:
    created = await client.create_device(device_id)
    key = created["authentication"]["symmetricKey"]["primaryKey"]
    dev = Device("127.0.0.1", hub.hub.mqtt_port, hub.hub.settings.hostname, device_id, key)
    assert dev.connect() == 0
    dev.subscribe_iothub()
    return dev


async def test_twin_rule_and_query_condition_agree_on_every_shape(flow_hub):
    tag = uuid.uuid4().hex[:8]
    made: list[Device] = []
    async with HubClient(flow_hub.connection_string(), base_url=flow_hub.base_url) as client:
        try:
            ids = []
            for i, (reported, expected) in enumerate(SHAPES):
                dev = await _device(flow_hub, client, f"fwrule-{tag}-{i}")
                made.append(dev)
                if reported:
                    assert dev.patch_reported(reported)[0] == 204
                twin = await client.get_twin(dev.device_id)
                assert installed_version(twin) == expected, reported
                ids.append(dev.device_id)
            among = "deviceId IN [" + ", ".join(quote_string(d) for d in ids) + "]"
            for version in ("2.0", "1.0"):
                rows = await client.query_all(f"SELECT deviceId FROM devices WHERE {among} AND ({not_on_version_condition(version)})")
                expected_ids = {d for d, (_, v) in zip(ids, SHAPES) if v != version}
                assert {r["deviceId"] for r in rows} == expected_ids, version
        finally:
            for dev in made:
                dev.disconnect()


async def test_the_simulator_reference_shape_gives_its_running_version(flow_hub):
    fleet = make_fleet(flow_hub, f"fwref{uuid.uuid4().hex[:6]}", 1)
    await fleet.start(timeout=60)
    try:
        device_id = fleet.device_ids()[0]
        async with HubClient(flow_hub.connection_string(), base_url=flow_hub.base_url) as client:
            twin = await client.get_twin(device_id)
            assert installed_version(twin) == fleet.device(device_id).firmware_version == BehaviourConfig().factory_firmware_version
            rows = await client.query_all(f"SELECT deviceId FROM devices WHERE deviceId = {quote_string(device_id)} "
                                          f"AND ({not_on_version_condition('1.0.0')})")  # fmt: skip
            assert rows == []
    finally:
        await fleet.stop()


async def test_update_firmware_confirms_a_device_reporting_the_azure_convention(flow_hub, connection):
    async with HubClient(flow_hub.connection_string(), base_url=flow_hub.base_url) as client:
        dev = await _device(flow_hub, client, f"fw74-{uuid.uuid4().hex[:8]}")
    try:
        assert dev.patch_reported({"firmware": {"currentFwVersion": "1.0"}, "iothubDM": {"firmwareUpdate": {"status": "waiting"}}})[0] == 204

        def handler(name, payload):
            version = payload["version"]
            dev.patch_reported({"iothubDM": {"firmwareUpdate": {"status": "applyComplete"}},
                                "firmware": {"currentFwVersion": version}})  # fmt: skip
            return 200, None

        dev.serve_methods(handler)
        result = await update_firmware(FirmwareUpdateRequest(
            package_uri="https://example.invalid/fw-3.1.0.bin", version="3.1.0", device_id=dev.device_id,
            step_timeout_seconds=4, poll_interval_seconds=0.2), connection)  # fmt: skip
        assert result.updated == [dev.device_id]
    finally:
        dev.disconnect()
