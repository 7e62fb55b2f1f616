"""Task retries through a real faulty proxy, Prefect events, and bounded task runs at 1,000 devices."""

from __future__ import annotations

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId
from prefect.testing.fixtures import asserting_events_worker, reset_worker_events  # noqa: F401 - fixtures

from iot_flows._exceptions import DeviceNotFoundError, UnauthorizedError
from iot_flows.blocks import HubConnection
from iot_flows.client import HubClient
from iot_flows.flows.hub import forward_hub_events
from iot_flows.flows.jobs import MethodJobRequest, run_method_job
from iot_flows.tasks import get_twin
from tests.flows.conftest import make_fleet
from tests.recording_proxy import RecordingProxy


@pytest.fixture
def flaky(flow_hub):
    proxies = []

    def make(failures: int) -> tuple[RecordingProxy, HubConnection]:
        proxy = RecordingProxy(flow_hub.base_url, fail_first=failures)
        proxies.append(proxy)
        return proxy, HubConnection(connection_string=flow_hub.connection_string(), base_url=proxy.url)

    yield make
    for proxy in proxies:
        proxy.close()


async def test_transient_503_is_healed_by_retries_with_backoff(fleet, flaky):
    proxy, conn = flaky(2)
    fast = get_twin.with_options(retry_delay_seconds=[0.2, 0.4, 0.8], retry_jitter_factor=0)
    twin = await fast(conn, fleet.device_ids()[0])
    assert twin["deviceId"] == fleet.device_ids()[0]
    assert len(proxy.times) == 3
    first_gap, second_gap = proxy.times[1] - proxy.times[0], proxy.times[2] - proxy.times[1]
    assert first_gap >= 0.18 and second_gap >= 0.38 and second_gap > first_gap  # exponential


async def test_retries_give_up_after_the_limit(fleet, flaky):
    proxy, conn = flaky(10)
    fast = get_twin.with_options(retries=2, retry_delay_seconds=0.05)
    with pytest.raises(Exception) as info:
        await fast(conn, fleet.device_ids()[0])
    assert getattr(info.value, "status_code", None) == 503
    assert len(proxy.times) == 3


async def test_non_retryable_errors_are_not_retried(flaky, flow_hub):
    proxy, conn = flaky(0)
    fast = get_twin.with_options(retry_delay_seconds=0.05)
    with pytest.raises(DeviceNotFoundError):
        await fast(conn, "no-such-device")
    assert len(proxy.times) == 1
    bad = HubConnection(connection_string=flow_hub.connection_string().rsplit("=", 2)[0] + "=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                        base_url=proxy.url)
    with pytest.raises(UnauthorizedError):
        await fast(bad, "anything")
    assert len(proxy.times) == 2


async def test_job_and_twin_changes_become_prefect_events(fleet, connection, flow_hub, asserting_events_worker):  # noqa: F811
    summary = await run_method_job(MethodJobRequest(method_name="lockDoor", query_condition="tags.building = '44'"), connection)
    async with HubClient(flow_hub.connection_string(), base_url=flow_hub.base_url) as client:
        since = (await client.read_changes(0, limit=100000))["next"]  # skip history: only what follows
    device = fleet.device(fleet.device_ids()[1])
    await device.client.patch_reported({"eventProbe": 1})
    result = await forward_hub_events(connection, duration_seconds=1.0, since=since)
    assert result["emitted"] >= 1
    asserting_events_worker.drain()
    events = asserting_events_worker._client.events
    job_events = [e for e in events if e.event == "iot-flows.job.completed"]
    assert any(e.resource.id == f"iot-flows.job.{summary.job_id}" for e in job_events)
    reported = [e for e in events if e.event == "iot-flows.twin.reported-changed"]
    probe = [e for e in reported if e.payload.get("patch") == {"eventProbe": 1}]
    assert probe and probe[0].resource.id == f"iot-flows.device.{fleet.device_ids()[1]}"
    assert any(r.role == "hub" for r in probe[0].related)


async def test_flow_over_1000_devices_creates_a_bounded_number_of_task_runs(flow_hub, connection):
    big = make_fleet(flow_hub, "scale", 1000)
    await big.start(timeout=120)
    try:
        state = await run_method_job(MethodJobRequest(method_name="lockDoor", query_condition="deviceId >= 'scale-' AND deviceId < 'scale.'"),
                                     connection, return_state=True)
        summary = await state.result()
        assert summary.device_count == 1000 and summary.succeeded == 1000
        async with get_client() as client:
            run_id = state.state_details.flow_run_id
            task_runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
            subflows = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id])))
        assert subflows == []
        assert 2 <= len(task_runs) <= 20, len(task_runs)  # create + a few polls + summary; never per device
    finally:
        await big.stop()


async def test_every_library_flow_names_its_runs_from_their_parameters(connection):
    # Found by a newcomer: the scheduled forward-hub-events run kept a random name
    # ("ultramarine-bloodhound") while the README says every run is named from its parameters.
    import iot_flows.flows as library
    from prefect import Flow
    from prefect.client.orchestration import get_client

    flows = [getattr(library, name) for name in library.__all__ if isinstance(getattr(library, name), Flow)]
    assert flows and all(f.flow_run_name is not None for f in flows), [f.name for f in flows if f.flow_run_name is None]
    state = await forward_hub_events(connection, duration_seconds=0.2, return_state=True)
    async with get_client() as client:
        run = await client.read_flow_run(state.state_details.flow_run_id)
    assert run.name == "hub events · 0.2 s"
