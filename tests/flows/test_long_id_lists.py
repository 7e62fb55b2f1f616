"""No request is built from an unbounded list: id lists are split under IoT Hub's limits.

A rollout retry over ~600 failed devices used to send one ``deviceId IN [...]`` condition
longer than 8,192 characters; the hub answered 400 and the wave failed.
"""

from __future__ import annotations

import uuid

import pytest

from iot_flows._exceptions import BadRequestError
from iot_flows.client import MAX_CONDITION_LENGTH, HubClient, device_id_conditions, quote_string
from iot_flows.flows.rollout import RolloutAbortedError, RolloutRequest, roll_out_firmware

COUNT = 650


def _ids(prefix: str, count: int = COUNT) -> list[str]:
    return [f"{prefix}-device-{i:04d}" for i in range(count)]


async def _register(client: HubClient, ids: list[str]) -> None:
    result = await client.bulk_devices([{"id": d, "importMode": "create", "status": "enabled"} for d in ids])
    assert result["isSuccessful"] is True, result["errors"][:3]


async def test_split_conditions_select_exactly_the_ids_and_each_is_accepted(flow_hub):
    prefix = f"long{uuid.uuid4().hex[:8]}"
    ids = _ids(prefix)
    async with HubClient(flow_hub.connection_string(), base_url=flow_hub.base_url) as client:
        await _register(client, ids)  # 650 items: the client sends them as 7 calls of <= 100
        whole = "deviceId IN [" + ", ".join(quote_string(d) for d in ids) + "]"
        assert len(whole) > 8192
        with pytest.raises(BadRequestError):  # the limit is real: one condition is refused
            await client.query_all(f"SELECT deviceId FROM devices WHERE {whole}")
        parts = device_id_conditions(ids)
        assert len(parts) >= 2 and all(len(cond) <= MAX_CONDITION_LENGTH for _, cond in parts)
        assert [d for part, _ in parts for d in part] == ids
        found: list[str] = []
        for part, cond in parts:
            rows = await client.query_all(f"SELECT deviceId FROM devices WHERE {cond}")
            assert sorted(r["deviceId"] for r in rows) == part
            found += part
        assert sorted(found) == ids


def test_an_id_too_long_for_any_condition_is_a_clear_error():
    with pytest.raises(ValueError, match="alone"):
        device_id_conditions(["x" * 100], max_length=50)
    assert device_id_conditions([]) == []
    assert device_id_conditions(["a", "a", "b"]) == [(["a", "b"], "deviceId IN ['a', 'b']")]


async def test_a_rollout_retry_over_650_failed_devices_splits_its_condition(flow_hub, connection):
    """650 registered but offline devices: every attempt fails, the retry must still run."""
    prefix = f"rl{uuid.uuid4().hex[:8]}"
    ids = _ids(prefix)
    async with HubClient(flow_hub.connection_string(), base_url=flow_hub.base_url) as client:
        await _register(client, ids)
    with pytest.raises(RolloutAbortedError) as info:
        await roll_out_firmware(RolloutRequest(
            package_uri="https://example.invalid/fw-9.0.0.bin", version="9.0.0",
            target_condition=f"deviceId >= '{prefix}-' AND deviceId < '{prefix}.'",
            waves=[100], retries=1, retry_backoff_seconds=0, device_timeout_seconds=5, poll_interval_seconds=0.2,
        ), connection)  # fmt: skip
    wave = info.value.summary.waves[0]
    assert wave.devices == COUNT and wave.attempts == 2  # the retry ran, over every device
    assert wave.updated == 0 and len(wave.failed) == COUNT
