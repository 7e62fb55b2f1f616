"""Every seed flow end to end under the Prefect harness, against a real hub and simulated devices."""

from __future__ import annotations

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId

from iot_flows._exceptions import ConfirmationTimeoutError, FirmwareUpdateFailedError, JobFailedError
from iot_flows.device import BehaviourConfig
from iot_flows.flows.configuration import (
    ConfigurationRequest,
    PropertyReadRequest,
    PropertyWriteRequest,
    read_device_property,
    update_configuration,
    write_device_property,
)
from iot_flows.flows.device_management import (
    FirmwareUpdateRequest,
    RebootRequest,
    factory_reset_devices,
    reboot_devices,
    update_firmware,
)
from iot_flows.flows.jobs import MethodJobRequest, TwinUpdateJobRequest, run_method_job, run_twin_update_job
from iot_flows.flows.report import FleetReportRequest, fleet_report
from tests.flows.conftest import FAST, make_fleet


async def _artifacts(flow_run_id):
    async with get_client() as client:
        return await client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))


async def _run(flow_fn, *args, **kwargs):
    """Run a flow and return (result or exception, flow_run_id)."""
    state = await flow_fn(*args, return_state=True, **kwargs)
    try:
        result = await state.result()
    except Exception as exc:  # noqa: BLE001
        result = exc
    return result, state.state_details.flow_run_id


async def test_method_job_flow_lock_door(fleet, connection):
    summary, run_id = await _run(run_method_job, MethodJobRequest(method_name="lockDoor", payload={"door": "front"},
                                                                  query_condition="tags.building = '43'"), connection)
    assert summary.status == "completed" and summary.device_count == 10 and summary.succeeded == 10
    twins = [fleet.device(d) for d in fleet.device_ids()[::2]]
    assert all(t is not None for t in twins)
    artifacts = await _artifacts(run_id)
    kinds = {a.type for a in artifacts}
    assert {"table", "progress"} <= kinds
    table = next(a for a in artifacts if a.type == "table")
    assert "completed" in str(table.data) and "10" in str(table.data)


async def test_method_job_flow_fails_by_name_when_devices_fail(fleet, connection):
    result, _ = await _run(run_method_job, MethodJobRequest(method_name="noSuchMethod", query_condition="tags.fleet = 'flow'"),
                           connection)
    assert isinstance(result, JobFailedError)
    assert result.summary.failed == 20 and result.summary.failures[0].device_status == 501


async def test_twin_update_flow_building_floor(fleet, connection, flow_hub):
    summary, _ = await _run(run_twin_update_job, TwinUpdateJobRequest(
        query_condition="tags.building = '44'", desired={"Building": "44", "Floor": "2"}), connection)
    assert summary.succeeded == 10
    from iot_flows.client import HubClient

    async with HubClient(flow_hub.connection_string(), base_url=flow_hub.base_url) as client:
        odd = await client.get_twin(fleet.device_ids()[1])
        even = await client.get_twin(fleet.device_ids()[0])
    assert odd["properties"]["desired"]["Floor"] == "2" and "Floor" not in even["properties"]["desired"]


async def test_reboot_flow_confirms_last_reboot(fleet, connection):
    result, _ = await _run(reboot_devices, RebootRequest(query_condition="tags.building = '43'", confirm_timeout_seconds=30,
                                                         poll_interval_seconds=0.3), connection)
    assert not isinstance(result, Exception), result
    assert len(result.confirmed) == 10 and result.not_confirmed == []


async def test_factory_reset_flow(fleet, connection):
    target = fleet.device_ids()[3]
    result, _ = await _run(factory_reset_devices, RebootRequest(query_condition=f"deviceId = '{target}'",
                                                                confirm_timeout_seconds=30, poll_interval_seconds=0.3), connection)
    assert result.confirmed == [target]


async def test_firmware_update_flow_follows_every_step(fleet, connection):
    target = fleet.device_ids()[5]
    result, run_id = await _run(update_firmware, FirmwareUpdateRequest(
        package_uri="https://example.invalid/fw-2.1.0.bin", version="2.1.0", device_id=target,
        step_timeout_seconds=30, poll_interval_seconds=0.1), connection)
    assert not isinstance(result, Exception), result
    assert result.updated == [target]
    steps = result.steps[target]
    assert steps[-1] == "applyComplete" and len(steps) >= 2
    assert steps.index("applyComplete") > 0
    tables = [a for a in await _artifacts(run_id) if a.type == "table"]
    assert any("applyComplete" in str(a.data) for a in tables)


async def test_firmware_update_failure_is_named(flow_hub, connection):
    broken = make_fleet(flow_hub, "fwfail", 2, behaviour=BehaviourConfig(
        fw_wait_seconds=0.05, fw_download_seconds=0.2, fw_apply_seconds=0.2, download_failure_rate=1.0))
    await broken.start(timeout=30)
    try:
        result, _ = await _run(update_firmware, FirmwareUpdateRequest(
            package_uri="https://example.invalid/fw-3.0.0.bin", version="3.0.0", query_condition="deviceId IN ['fwfail-00000', 'fwfail-00001']",
            step_timeout_seconds=20, poll_interval_seconds=0.1), connection)
        assert isinstance(result, FirmwareUpdateFailedError)
        assert set(result.summary.failed.values()) == {"downloadFailed"}
        insecure, _ = await _run(update_firmware, FirmwareUpdateRequest(
            package_uri="http://insecure/fw.bin", version="3.0.0", device_id="fwfail-00000", step_timeout_seconds=5), connection)
        assert isinstance(insecure, FirmwareUpdateFailedError)  # the device refuses non-https with 400
    finally:
        await broken.stop()


async def test_firmware_update_timeout_when_devices_hang(flow_hub, connection):
    hung = make_fleet(flow_hub, "fwhang", 1, behaviour=BehaviourConfig(fw_wait_seconds=0.05, hang_rate=1.0))
    await hung.start(timeout=30)
    try:
        result, _ = await _run(update_firmware, FirmwareUpdateRequest(
            package_uri="https://example.invalid/fw-4.0.0.bin", version="4.0.0", device_id="fwhang-00000",
            step_timeout_seconds=2, poll_interval_seconds=0.2), connection)
        assert isinstance(result, ConfirmationTimeoutError)
        assert list(result.summary.timed_out) == ["fwhang-00000"]
    finally:
        await hung.stop()


async def test_configuration_and_property_flows(fleet, connection):
    config, _ = await _run(update_configuration, ConfigurationRequest(
        config={"telemetryIntervalSeconds": 15}, query_condition="tags.building = '44'", confirm_timeout_seconds=30,
        poll_interval_seconds=0.3), connection)
    assert not isinstance(config, Exception), config
    assert len(config.confirmed) == 10
    write, _ = await _run(write_device_property, PropertyWriteRequest(
        name="telemetryConfig", value={"sendFrequency": "5m"}, query_condition="tags.building = '43'",
        confirm_timeout_seconds=30, poll_interval_seconds=0.3), connection)
    assert not isinstance(write, Exception), write
    assert len(write.confirmed) == 10
    values, _ = await _run(read_device_property, PropertyReadRequest(path="telemetryConfig.sendFrequency",
                                                                     query_condition="tags.fleet = 'flow'"), connection)
    assert sorted(set(values.values()), key=str) == [None, "5m"] or set(values.values()) == {"5m", None}
    assert sum(1 for v in values.values() if v == "5m") == 10


async def test_fleet_report_groups(fleet, connection):
    report, run_id = await _run(fleet_report, FleetReportRequest(
        group_by=["tags.building", "connectionState"], query_condition="tags.fleet = 'flow'"), connection)
    assert report.total_devices == 20
    assert report.groups["tags.building"] == {"43": 10, "44": 10}
    assert report.groups["connectionState"].get("Connected", 0) >= 18
    kinds = [a.type for a in await _artifacts(run_id)]
    assert kinds.count("table") == 2 and "markdown" in kinds


async def test_serve_hub_flow_runs_the_hub_for_its_duration(tmp_path):
    from iot_flows.flows.hub import HubServeRequest, serve_hub
    from iot_flows.store import open_store

    db = tmp_path / "served.db"
    result = await serve_hub(HubServeRequest(mqtt_port=0, http_port=0, db=str(db), duration_seconds=1.0))
    assert result["served_seconds"] >= 1.0 and result["devices_connected_at_stop"] == 0
    store = await open_store(str(db))
    try:
        assert "iothubowner" in (await store.get_meta("policy_keys") or "")
    finally:
        await store.close()
