"""Staged firmware rollout against a real hub and simulated devices."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from iot_flows.client import HubClient
from iot_flows.device import BehaviourConfig
from iot_flows.flows.rollout import (
    RolloutAbortedError,
    RolloutRequest,
    Window,
    roll_out_firmware,
    split_waves,
    wave_condition,
)
from tests.flows.conftest import make_fleet

FAST_FW = dict(fw_wait_seconds=0.05, fw_download_seconds=0.2, fw_apply_seconds=0.2, jitter=0.1)


def test_split_waves_is_stable_and_gives_the_canary_one_device():
    ids = [f"d{i:03d}" for i in range(200)]
    waves = split_waves(ids, [1, 10, 50, 100])
    assert [len(w) for w in waves] == [2, 18, 80, 100]
    assert sum(waves, []) == ids
    assert [len(w) for w in split_waves(ids[:3], [1, 10, 50, 100])] == [1, 1, 1]
    cond = wave_condition("tags.ring = 'x'", ids[:5], "2.0")
    assert "deviceId >= 'd000'" in cond and "deviceId <= 'd004'" in cond
    # No id list: the size does not grow with the wave (the version rule of flows/_firmware.py
    # covers three reported paths, so the bound is 1 KB rather than 300 characters).
    assert len(wave_condition("tags.ring = 'x'", ids[:150], "2.0")) == len(cond) < 1024


def test_window_math():
    noon = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert Window(start="11:00", end="13:00").seconds_until_open(noon) == 0
    assert Window(start="13:00", end="14:00").seconds_until_open(noon) == 3600
    assert Window(start="22:00", end="04:00").seconds_until_open(noon) == 10 * 3600
    assert Window(start="22:00", end="04:00").seconds_until_open(noon.replace(hour=1)) == 0
    assert Window(start="11:00", end="11:30").seconds_until_open(noon) == timedelta(hours=23).total_seconds()
    assert Window(start="13:00", end="14:00", timezone="+02:00").seconds_until_open(noon) == 23 * 3600
    assert Window(start="13:00", end="14:00", days=["Fri"]).seconds_until_open(noon) == 24 * 3600 + 3600  # 2026-01-01 is a Thursday
    with pytest.raises(ValueError):
        Window(start="25:00", end="01:00")


async def test_rollout_in_waves_skips_current_devices(flow_hub, connection):
    fleet = make_fleet(flow_hub, "roll", 12, behaviour=BehaviourConfig(**FAST_FW))
    await fleet.start(timeout=60)
    try:
        async with HubClient(flow_hub.connection_string(), base_url=flow_hub.base_url) as client:
            for device_id in fleet.device_ids():
                await client.update_twin(device_id, {"tags": {"ring": "roll"}})
        result = await roll_out_firmware(RolloutRequest(
            package_uri="https://example.invalid/fw-5.0.0.bin", version="5.0.0", target_condition="tags.ring = 'roll'",
            waves=[10, 50, 100], device_timeout_seconds=20, poll_interval_seconds=0.2, retry_backoff_seconds=0), connection)
        assert result.status == "completed" and result.targets == 12 and result.already_current == 0
        assert [w.devices for w in result.waves] == [1, 5, 6]
        assert all(w.updated == w.devices for w in result.waves)
        again = await roll_out_firmware(RolloutRequest(
            package_uri="https://example.invalid/fw-5.0.0.bin", version="5.0.0", target_condition="tags.ring = 'roll'",
            device_timeout_seconds=20, poll_interval_seconds=0.2), connection)
        assert again.targets == 0 and again.already_current == 12 and again.waves == []
    finally:
        await fleet.stop()


async def test_rollout_aborts_when_the_canary_fails(flow_hub, connection):
    fleet = make_fleet(flow_hub, "abort", 10, behaviour=BehaviourConfig(download_failure_rate=1.0, **FAST_FW))
    await fleet.start(timeout=60)
    try:
        async with HubClient(flow_hub.connection_string(), base_url=flow_hub.base_url) as client:
            for device_id in fleet.device_ids():
                await client.update_twin(device_id, {"tags": {"ring": "abort"}})
        with pytest.raises(RolloutAbortedError) as info:
            await roll_out_firmware(RolloutRequest(
                package_uri="https://example.invalid/fw-6.0.0.bin", version="6.0.0", target_condition="tags.ring = 'abort'",
                waves=[20, 100], retries=1, retry_backoff_seconds=0.1, device_timeout_seconds=10,
                poll_interval_seconds=0.2), connection)
        summary = info.value.summary
        assert summary.status == "aborted" and len(summary.waves) == 1  # the second wave never started
        assert summary.waves[0].attempts == 2 and len(summary.waves[0].failed) == 2
        async with HubClient(flow_hub.connection_string(), base_url=flow_hub.base_url) as client:
            untouched = await client.get_twin(fleet.device_ids()[-1])
        assert untouched["properties"]["reported"].get("iothubDM", {}).get("firmwareUpdate") is None
    finally:
        await fleet.stop()


async def test_rollout_pauses_for_approval_after_the_canary(flow_hub, connection):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactCollectionFilter,
        ArtifactCollectionFilterKey,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateName,
    )
    from prefect.flow_runs import resume_flow_run

    fleet = make_fleet(flow_hub, "approve", 4, behaviour=BehaviourConfig(**FAST_FW))
    await fleet.start(timeout=60)
    try:
        async with HubClient(flow_hub.connection_string(), base_url=flow_hub.base_url) as client:
            for device_id in fleet.device_ids():
                await client.update_twin(device_id, {"tags": {"ring": "approve"}})
        run = asyncio.create_task(roll_out_firmware(RolloutRequest(
            package_uri="https://example.invalid/fw-7.0.0.bin", version="7.0.0", target_condition="tags.ring = 'approve'",
            waves=[25, 100], approval_after_canary=True, approval_timeout_seconds=60, device_timeout_seconds=20,
            poll_interval_seconds=0.2), connection))
        paused = []
        async with get_client() as prefect:
            for _ in range(300):
                paused = await prefect.read_flow_runs(flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Paused"]))))
                if paused or run.done():
                    break
                await asyncio.sleep(0.1)
        assert paused, "the rollout should pause after the canary"
        async with HubClient(flow_hub.connection_string(), base_url=flow_hub.base_url) as client:
            versions = [installed for d in fleet.device_ids()
                        if (installed := (await client.get_twin(d))["properties"]["reported"].get("firmware", {}).get("version")) == "7.0.0"]
        assert len(versions) == 1  # only the canary was updated while paused
        # The operator decides from the resume form's description and the per-wave table, both there now.
        from prefect.input.actions import aread_flow_run_input

        keyset = paused[0].state.state_details.run_input_keyset
        description = await aread_flow_run_input(keyset["description"], flow_run_id=paused[0].id)
        assert "Canary of firmware 7.0.0" in description and "1 done: 1 succeeded, 0 failed" in description
        async with get_client() as prefect:
            table = await prefect.read_latest_artifacts(artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=["rollout-7-0-0"])))
        assert table and "waiting for approval: wave 1/2 done: 1 done: 1 succeeded, 0 failed" in table[0].description
        assert '"status": "pending"' in str(table[0].data) and '"status": "updated"' in str(table[0].data)
        await resume_flow_run(paused[0].id)
        result = await asyncio.wait_for(run, 60)
        assert result.status == "completed" and [w.devices for w in result.waves] == [1, 3]
    finally:
        await fleet.stop()
