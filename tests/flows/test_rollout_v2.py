"""Rollout v2 controls against a real hub and simulated devices with injected faults."""

from __future__ import annotations

import asyncio
import time

import pytest
from prefect.testing.fixtures import asserting_events_worker, reset_worker_events  # noqa: F401 - fixtures

from iot_flows.client import HubClient
from iot_flows.device import BehaviourConfig
from iot_flows.flows.rollout import AbortCriterion, HealthGate, RolloutAbortedError, RolloutRequest, roll_out_firmware

from tests.flows.conftest import make_fleet

FAST_FW = dict(fw_wait_seconds=0.05, fw_download_seconds=0.2, fw_apply_seconds=0.2, jitter=0.1)


async def _tag(hub, ids: list[str], ring: str) -> None:
    async with HubClient(hub.connection_string(), base_url=hub.base_url) as client:
        for device_id in ids:
            await client.update_twin(device_id, {"tags": {"ring": ring}})


async def _twins(hub, ids: list[str]) -> dict[str, dict]:
    async with HubClient(hub.connection_string(), base_url=hub.base_url) as client:
        return {d: await client.get_twin(d) for d in ids}


def _request(version: str, ring: str, **kw) -> RolloutRequest:
    base = dict(package_uri=f"https://example.invalid/fw-{version}.bin", version=version, target_condition=f"tags.ring = '{ring}'",
                device_timeout_seconds=20, poll_interval_seconds=0.2, retry_backoff_seconds=0.1)  # fmt: skip
    return RolloutRequest(**{**base, **kw})


async def test_dry_run_returns_the_plan_and_changes_nothing(flow_hub, connection):
    fleet = make_fleet(flow_hub, "dry", 6, behaviour=BehaviourConfig(**FAST_FW))
    await fleet.start(timeout=60)
    try:
        await _tag(flow_hub, fleet.device_ids(), "dry")
        before = await _twins(flow_hub, fleet.device_ids())
        async with HubClient(flow_hub.connection_string(), base_url=flow_hub.base_url) as client:
            jobs_before = len(await client.query_jobs())
        result = await roll_out_firmware(_request("8.0.0", "dry", waves=[20, 100],
                                                  maintenance_window={"start": "00:00", "end": "23:59"}), connection, dry_run=True)  # fmt: skip
        plan = result.plan
        assert result.status == "planned" and result.targets == 6 and plan.already_current == 0
        assert [(w.devices, w.to_update) for w in plan.waves] == [(1, 1), (5, 5)]
        assert plan.waves[1].first == "dry-00001" and plan.waves[1].last == "dry-00005"
        assert "deviceId >= 'dry-00001'" in plan.waves[1].job_condition and "tags.ring = 'dry'" in plan.waves[1].job_condition
        assert plan.waves[0].opens  # the window's opening time
        current = await roll_out_firmware(_request("1.0.0", "dry", dry_run=True), connection)
        assert current.targets == 0 and current.plan.skipped == sorted(fleet.device_ids())
        after = await _twins(flow_hub, fleet.device_ids())
        assert {d: t["version"] for d, t in after.items()} == {d: t["version"] for d, t in before.items()}
        async with HubClient(flow_hub.connection_string(), base_url=flow_hub.base_url) as client:
            assert len(await client.query_jobs()) == jobs_before  # no job created
    finally:
        await fleet.stop()


async def test_canary_failures_abort_during_the_wave_and_cancel_its_job(flow_hub, connection):
    """Wave 1 = 3 failing devices + 3 offline ones (the job keeps waiting for them): the
    abort criterion passes while the job runs; it is cancelled and wave 2 never starts."""
    fleet = make_fleet(flow_hub, "cab", 6, behaviour=BehaviourConfig(apply_failure_rate=1.0, **FAST_FW))
    await fleet.start(timeout=60)
    offline = [f"cab-{i:05d}x" for i in range(3)]
    try:
        async with HubClient(flow_hub.connection_string(), base_url=flow_hub.base_url) as client:
            await client.bulk_devices([{"id": d, "importMode": "create", "status": "enabled"} for d in offline])
        await _tag(flow_hub, fleet.device_ids() + offline, "cab")
        t0 = time.monotonic()
        with pytest.raises(RolloutAbortedError) as info:
            await roll_out_firmware(_request("6.1.0", "cab", waves=[67, 100], device_timeout_seconds=60, retries=2,
                                             wait_for_offline_devices=True, min_success_ratio=0,
                                             abort=[AbortCriterion(failure_type="failed", threshold_ratio=0.5, min_finished=3)]),
                                    connection)  # fmt: skip
        assert time.monotonic() - t0 < 40  # long before the 60 s device timeout
        summary = info.value.summary
        assert summary.status == "aborted" and "failed 3/3" in summary.reason and len(summary.waves) == 1
        wave = summary.waves[0]
        assert wave.devices == 6 and wave.offline_at_start == 3 and wave.attempts == 1  # applyFailed: never retried
        assert sorted(wave.failed) == ["cab-00000", "cab-00001", "cab-00002"]
        async with HubClient(flow_hub.connection_string(), base_url=flow_hub.base_url) as client:
            jobs = [j for j in await client.query_jobs(job_type="scheduleDeviceMethod") if "cab-00000" in (j.get("queryCondition") or "")]
        assert [j["status"] for j in jobs] == ["cancelled"]  # the update job (the tags job recording previous versions ended)
        later = await _twins(flow_hub, ["cab-00003", "cab-00004", "cab-00005"])
        assert all(t["properties"]["reported"].get("iothubDM", {}).get("firmwareUpdate") is None for t in later.values())
    finally:
        await fleet.stop()


async def test_a_rejection_is_not_retried_while_a_timeout_is(flow_hub, connection):
    fleet = make_fleet(flow_hub, "rej", 3, behaviour=BehaviourConfig(hang_rate=1.0, **FAST_FW))
    await fleet.start(timeout=60)
    try:
        await _tag(flow_hub, fleet.device_ids(), "rej")
        lenient = dict(waves=[100], retries=3, min_success_ratio=0, abort_failure_ratio=1.0)
        # a non-https package: every device answers 400, once
        result = await roll_out_firmware(_request("6.2.0", "rej", package_uri="http://example.invalid/fw.bin", **lenient), connection)
        wave = result.waves[0]
        assert wave.attempts == 1 and wave.retried == 0 and len(wave.rejected) == 3
        # hanging devices: no progress for 1 s = timed out (per step), retried; the retry is
        # answered 409 (still busy), a rejection: no third attempt
        result = await roll_out_firmware(_request("6.2.0", "rej", step_timeout_seconds=1, **lenient), connection)
        wave = result.waves[0]
        assert wave.attempts == 2 and wave.retried == 3 and len(wave.rejected) == 3 and wave.seconds < 15
    finally:
        await fleet.stop()


async def test_rollback_restores_exactly_the_devices_that_changed(flow_hub, connection):
    good = make_fleet(flow_hub, "rba", 3, behaviour=BehaviourConfig(**FAST_FW))
    bad = make_fleet(flow_hub, "rbb", 3, behaviour=BehaviourConfig(apply_failure_rate=1.0, **FAST_FW))
    await good.start(timeout=60)
    await bad.start(timeout=60)
    try:
        ids = good.device_ids() + bad.device_ids()
        await _tag(flow_hub, ids, "rb")
        with pytest.raises(RolloutAbortedError) as info:
            await roll_out_firmware(_request("6.3.0", "rb", waves=[50, 100], rollback_on_abort=True,
                                             rollback_package_uri="https://example.invalid/fw-{version}.bin"), connection)  # fmt: skip
        summary = info.value.summary
        assert [w.updated for w in summary.waves] == [3, 0]
        assert summary.previous == {d: {"version": "1.0.0", "package_uri": "https://example.invalid/fw-1.0.0.bin"} for d in ids}
        assert summary.rollback.kind == "rollback" and summary.rollback.devices == 3 and summary.rollback.updated == 3
        twins = await _twins(flow_hub, ids)
        assert {d: t["properties"]["reported"]["firmware"]["version"] for d, t in twins.items()} == {d: "1.0.0" for d in ids}
        # only the good devices were touched twice (update + rollback); the bad ones never rolled back
        assert good.counters["fw_succeeded"] == 6  # 3 updates + 3 rollbacks
        assert bad.counters["fw_succeeded"] == 0 and bad.counters["fw_apply_failed"] == 3  # tried once, never rolled back
    finally:
        await good.stop()
        await bad.stop()


async def test_the_health_gate_holds_the_next_wave_until_it_holds(flow_hub, connection):
    fleet = make_fleet(flow_hub, "hg", 4, behaviour=BehaviourConfig(**FAST_FW))
    await fleet.start(timeout=60)
    try:
        await _tag(flow_hub, fleet.device_ids(), "hg")
        canary = fleet.device("hg-00000").behaviour
        await canary.report({"health": {"status": "degraded"}})
        for device_id in fleet.device_ids()[1:]:
            await fleet.device(device_id).behaviour.report({"health": {"status": "ok"}})
        health = HealthGate(condition="properties.reported.health.status = 'ok'", hold_seconds=1, timeout_seconds=3)
        with pytest.raises(RolloutAbortedError) as info:
            await roll_out_firmware(_request("6.4.0", "hg", waves=[25, 100], health=health), connection)
        assert "health gate: 0/1 devices match" in info.value.summary.reason and len(info.value.summary.waves) == 1
        assert fleet.device("hg-00001").firmware_version == "1.0.0"  # the next wave never started

        healed = []

        async def heal() -> None:
            await asyncio.sleep(3)
            await canary.report({"health": {"status": "ok"}})
            healed.append(time.time())

        healer = asyncio.create_task(heal())
        health = HealthGate(condition="properties.reported.health.status = 'ok'", hold_seconds=1, timeout_seconds=30)
        result = await roll_out_firmware(_request("6.5.0", "hg", waves=[25, 100], health=health), connection)
        await healer
        assert result.status == "completed" and [w.devices for w in result.waves] == [1, 3]
        twins = await _twins(flow_hub, ["hg-00001"])
        started = twins["hg-00001"]["properties"]["reported"]["iothubDM"]["firmwareUpdate"]["startedWaitingTime"]
        from datetime import datetime

        assert datetime.fromisoformat(started.replace("Z", "+00:00")).timestamp() >= healed[0] + 1  # held >= 1 s after healing
    finally:
        await fleet.stop()


async def test_desired_property_mechanism_and_a_template(flow_hub, connection):
    fleet = make_fleet(flow_hub, "dsr", 3, behaviour=BehaviourConfig(**FAST_FW))
    await fleet.start(timeout=60)
    try:
        await _tag(flow_hub, fleet.device_ids(), "dsr")
        result = await roll_out_firmware(_request("6.6.0", "dsr", waves=[50, 100], mechanism="desired"), connection)
        assert result.status == "completed" and sum(w.updated for w in result.waves) == 3
        twins = await _twins(flow_hub, fleet.device_ids())
        assert all(t["properties"]["reported"]["firmware"]["currentFwVersion"] == "6.6.0" for t in twins.values())
        assert all(t["properties"]["desired"]["firmware"]["fwVersion"] == "6.6.0" for t in twins.values())
        template = {"desired": {"telemetryConfig": {"sendFrequency": "7s"}},
                    "success": {"telemetryConfig.status": "Success", "telemetryConfig.sendFrequency": "7s"},
                    "failure": {"telemetryConfig.status": ["Failed"]}}  # fmt: skip
        config = await roll_out_firmware(_request("telemetry-7s", "dsr", waves=[100], mechanism="template", template=template),
                                         connection)  # fmt: skip
        assert config.status == "completed" and config.waves[0].updated == 3
        again = await roll_out_firmware(_request("telemetry-7s", "dsr", mechanism="template", template=template), connection)
        assert again.targets == 0 and again.already_current == 3
    finally:
        await fleet.stop()


async def test_rate_limit_starts_devices_in_chunks(flow_hub, connection):
    fleet = make_fleet(flow_hub, "rate", 4, behaviour=BehaviourConfig(**FAST_FW))
    await fleet.start(timeout=60)
    try:
        await _tag(flow_hub, fleet.device_ids(), "rate")
        result = await roll_out_firmware(_request("6.7.0", "rate", waves=[100], rate={"max_per_minute": 120}), connection)
        assert result.status == "completed" and result.waves[0].updated == 4
        async with HubClient(flow_hub.connection_string(), base_url=flow_hub.base_url) as client:
            jobs = [j for j in await client.query_jobs() if "rate-0000" in (j.get("queryCondition") or "")]
        assert len(jobs) >= 2  # 2 devices per second at most: more than one job
    finally:
        await fleet.stop()


async def test_live_progress_and_one_event_per_wave_and_verdict(flow_hub, connection, asserting_events_worker):  # noqa: F811
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    fleet = make_fleet(flow_hub, "evt", 4, behaviour=BehaviourConfig(**FAST_FW))
    await fleet.start(timeout=60)
    try:
        await _tag(flow_hub, fleet.device_ids(), "evt")
        await roll_out_firmware(_request("6.8.0", "evt", waves=[50, 100], rollout_id="evt-rollout"), connection)
        events: list = []
        for _ in range(50):  # events are sent by a background worker: wait until all three are there
            asserting_events_worker.drain()
            events = [e for e in asserting_events_worker._client.events if e.event.startswith("iot-flows.rollout.")]
            if len(events) >= 3:
                break
            await asyncio.sleep(0.1)
        assert [e.event for e in events] == ["iot-flows.rollout.wave-completed"] * 2 + ["iot-flows.rollout.completed"]
        assert events[0].resource.id == "iot-flows.rollout.evt-rollout.wave.0" and events[0].payload["updated"] == 2
        async with get_client() as prefect:
            versions = await prefect.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["rollout-evt-rollout"])))
        live = [a for a in versions if "attempt 1:" in (a.description or "")]
        assert live and any("running:" in str(a.data) for a in live)  # counts by state while a wave ran
    finally:
        await fleet.stop()


async def test_resume_by_rollout_id_and_refuse_a_second_run_at_once(flow_hub, connection):
    from iot_flows.flows.rollout import RolloutInProgressError

    fleet = make_fleet(flow_hub, "res", 6, behaviour=BehaviourConfig(**{**FAST_FW, "fw_apply_seconds": 1.0}))
    await fleet.start(timeout=60)
    try:
        await _tag(flow_hub, fleet.device_ids(), "res")
        request = _request("6.9.0", "res", waves=[34, 67, 100], rollout_id="res-1")
        # the first run stops after its canary wave: a health gate that never holds keeps it there
        never = HealthGate(condition="properties.reported.never = 1", hold_seconds=1, timeout_seconds=300)
        first = asyncio.create_task(roll_out_firmware(request.model_copy(update={"health": never}), connection))
        for _ in range(300):  # until the canary wave is done
            if sum(fleet.device(d).firmware_version == "6.9.0" for d in fleet.device_ids()) >= 2 or first.done():
                break
            await asyncio.sleep(0.1)
        with pytest.raises(RolloutInProgressError, match="res-1 is already running"):
            await roll_out_firmware(request, connection)
        first.cancel()  # the flow-run process stops mid-rollout
        with pytest.raises((asyncio.CancelledError, Exception)):
            await first
        await asyncio.sleep(3)  # devices that got the method before the stop finish their update
        updated_before = fleet.counters["fw_succeeded"]
        assert updated_before == 2
        result = await roll_out_firmware(request, connection)
        assert result.status == "completed" and result.already_current == 2 and result.targets == 4
        assert all(fleet.device(d).firmware_version == "6.9.0" for d in fleet.device_ids())
        assert fleet.counters["fw_succeeded"] == 6  # nobody updated twice
    finally:
        await fleet.stop()
