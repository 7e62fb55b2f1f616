"""Rollout state in the hub: resume after ``kill -9``, the same-id lease, previous versions in tags,
template rollback. Real hub, simulated fleet, Prefect harness; the killed run is a real process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from iot_flows.client import HubClient
from iot_flows.device import BehaviourConfig
from iot_flows.flows.rollout import RolloutAbortedError, RolloutInProgressError, RolloutRequest, roll_out_firmware

from tests.flows.conftest import make_fleet

FW = dict(fw_wait_seconds=0.05, fw_download_seconds=1.0, fw_apply_seconds=0.5, jitter=0.1)

_CHILD = """
import asyncio, json, sys
from iot_flows.blocks import HubConnection
from iot_flows.flows.rollout import RolloutRequest, roll_out_firmware
args = json.loads(sys.argv[1])
conn = HubConnection(connection_string=args["cs"], base_url=args["url"])
asyncio.run(roll_out_firmware(RolloutRequest(**args["request"]), conn))
"""


def _request(version: str, ring: str, **kw) -> RolloutRequest:
    base = dict(package_uri=f"https://example.invalid/fw-{version}.bin", version=version, target_condition=f"tags.ring = '{ring}'",
                device_timeout_seconds=30, poll_interval_seconds=0.2, retry_backoff_seconds=0.1)  # fmt: skip
    return RolloutRequest(**{**base, **kw})


async def _client(hub) -> HubClient:
    return HubClient(hub.connection_string(), base_url=hub.base_url)


async def _tag(hub, ids: list[str], ring: str) -> None:
    async with await _client(hub) as client:
        for device_id in ids:
            await client.update_twin(device_id, {"tags": {"ring": ring}})


def _methods(fleet) -> int:
    """firmwareUpdate calls the fleet's devices received, in all."""
    return int(fleet.counters["method:firmwareUpdate"])


async def test_resume_after_kill_9_continues_without_updating_anyone_twice(flow_hub, connection):
    from prefect.settings import PREFECT_API_URL

    fleet = make_fleet(flow_hub, "kil", 12, behaviour=BehaviourConfig(**FW))
    await fleet.start(timeout=60)
    ids = sorted(fleet.device_ids())
    try:
        await _tag(flow_hub, ids, "kil")
        # 2 devices a second in the big wave: the kill lands while that wave is being rolled out
        request = _request("7.1.0", "kil", waves=[25, 100], rollout_id="kil-1", rate={"max_per_minute": 120})
        args = {"cs": flow_hub.connection_string(), "url": flow_hub.base_url, "request": request.model_dump(mode="json")}
        env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "PREFECT_LOGGING_LEVEL": "WARNING"}
        child = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(args)], env=env)
        try:
            deadline = time.monotonic() + 120
            while _methods(fleet) < 5 and child.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert child.poll() is None, "the rollout process ended before the kill"
            os.kill(child.pid, signal.SIGKILL)  # mid-wave: wave 2 has started on some devices only
        finally:
            if child.poll() is None:
                child.kill()
            child.wait(timeout=30)
        assert 5 <= _methods(fleet) < 12
        async with await _client(flow_hub) as client:
            lease = (await client.get_twin(ids[0]))["tags"]["rollouts"]["id_kil_1"]["lease"]
        assert lease["pid"] == child.pid  # the dead run still "holds" it
        await asyncio.sleep(2)  # the devices that got the method before the kill are mid-update

        result = await roll_out_firmware(request, connection)  # same id: takes the dead run's lease over

        assert result.status == "completed"
        assert all(fleet.device(d).firmware_version == "7.1.0" for d in ids)
        assert _methods(fleet) == 12 and fleet.counters["fw_succeeded"] == 12  # all updated, nobody twice
        async with await _client(flow_hub) as client:
            twins = {d: await client.get_twin(d) for d in ids}
        mine = [t["tags"]["rollouts"]["id_kil_1"] for t in twins.values()]
        # recorded before the update (a merge-patch drops nulls: no package URI known is "")
        assert [m["previous"] for m in mine] == [{"version": "1.0.0", "package_uri": ""}] * 12
        assert "lease" not in mine[0]  # released at the end
        from prefect.client.orchestration import get_client

        async with get_client() as prefect:  # the killed run's flow run no longer shows Running
            stale = await prefect.read_flow_run(lease["flowRunId"])
        assert stale.state.type.value == "CRASHED" and "taken over" in (stale.state.message or "")
    finally:
        await fleet.stop()


async def test_the_lease_refuses_a_live_holder_by_name_and_lapses_when_it_expires(flow_hub, connection):
    fleet = make_fleet(flow_hub, "lea", 3, behaviour=BehaviourConfig(**FW))
    await fleet.start(timeout=60)
    ids = sorted(fleet.device_ids())
    try:
        await _tag(flow_hub, ids, "lea")
        request = _request("7.2.0", "lea", waves=[100], rollout_id="lea-1")
        later = (datetime.now(UTC) + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        holder = {"token": "x", "host": "other-host", "pid": 4242, "flowRunId": "f00", "flowRunName": "brave-otter", "expires": later}
        async with await _client(flow_hub) as client:
            await client.update_twin(ids[0], {"tags": {"rollouts": {"id_lea_1": {"lease": holder}}}})
        with pytest.raises(RolloutInProgressError, match=r"rollout lea-1 is already running: held by flow run 'brave-otter'.*pid 4242 on other-host"):
            await roll_out_firmware(request, connection)
        assert fleet.counters["fw_succeeded"] == 0  # refused before touching anyone
        past = (datetime.now(UTC) - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        async with await _client(flow_hub) as client:  # the holder stopped renewing: its lease ran out
            await client.update_twin(ids[0], {"tags": {"rollouts": {"id_lea_1": {"lease": {**holder, "expires": past}}}}})
        result = await roll_out_firmware(request, connection)
        assert result.status == "completed" and sum(w.updated for w in result.waves) == 3
    finally:
        await fleet.stop()


async def test_a_second_run_of_the_same_id_at_once_is_refused_naming_the_holder(flow_hub, connection):
    fleet = make_fleet(flow_hub, "two", 4, behaviour=BehaviourConfig(**{**FW, "fw_apply_seconds": 3.0}))
    await fleet.start(timeout=60)
    try:
        await _tag(flow_hub, fleet.device_ids(), "two")
        request = _request("7.3.0", "two", waves=[100], rollout_id="two-1")
        first = asyncio.create_task(roll_out_firmware(request, connection))
        for _ in range(300):
            if _methods(fleet) or first.done():
                break
            await asyncio.sleep(0.05)
        with pytest.raises(RolloutInProgressError, match=rf"two-1 is already running: held by .*pid {os.getpid()} on {socket.gethostname()}"):
            await roll_out_firmware(request, connection)
        assert (await first).status == "completed"
    finally:
        await fleet.stop()


def test_rollback_of_a_template_without_a_rollback_action_is_refused_at_validation():
    template = {"desired": {"telemetryConfig": {"sendFrequency": "7s"}}, "success": {"telemetryConfig.sendFrequency": "7s"}}
    with pytest.raises(ValidationError, match="rollback_on_abort: unsupported for this template"):
        _request("cfg", "x", mechanism="template", template=template, rollback_on_abort=True)
    ok = {**template, "rollback": {"desired": {"telemetryConfig": {"sendFrequency": "5s"}},
                                   "success": {"telemetryConfig.sendFrequency": "5s"}}}  # fmt: skip
    assert _request("cfg", "x", mechanism="template", template=ok, rollback_on_abort=True).template.rollback is not None


async def test_template_rollback_runs_its_declared_action_on_the_devices_that_changed(flow_hub, connection):
    good = make_fleet(flow_hub, "tra", 2, behaviour=BehaviourConfig(**FW))
    bad = make_fleet(flow_hub, "trb", 2, behaviour=BehaviourConfig(config_failure_rate=1.0, **FW))
    await good.start(timeout=60)
    await bad.start(timeout=60)
    try:
        ids = good.device_ids() + bad.device_ids()
        await _tag(flow_hub, ids, "tr")
        template = {"desired": {"telemetryConfig": {"sendFrequency": "7s"}},
                    "success": {"telemetryConfig.status": "Success", "telemetryConfig.sendFrequency": "7s"},
                    "failure": {"telemetryConfig.status": ["Failed"]},
                    "rollback": {"desired": {"telemetryConfig": {"sendFrequency": "5s"}},
                                 "success": {"telemetryConfig.status": "Success", "telemetryConfig.sendFrequency": "5s"}}}  # fmt: skip
        with pytest.raises(RolloutAbortedError) as info:
            await roll_out_firmware(_request("cfg-7s", "tr", waves=[50, 100], mechanism="template", template=template,
                                             rollback_on_abort=True), connection)  # fmt: skip
        summary = info.value.summary
        assert [w.updated for w in summary.waves] == [2, 0]
        assert summary.rollback is not None and summary.rollback.devices == 2 and summary.rollback.updated == 2
        async with await _client(flow_hub) as client:
            twins = {d: await client.get_twin(d) for d in ids}
        assert {d: t["properties"]["reported"]["telemetryConfig"]["sendFrequency"] for d, t in twins.items() if d in good.device_ids()} \
            == {d: "5s" for d in good.device_ids()}  # fmt: skip
        recorded = [json.loads(t["tags"]["rollouts"]["id_cfg_7s"]["previous"]["values"]) for t in twins.values()]
        assert recorded == [{"telemetryConfig.status": None, "telemetryConfig.sendFrequency": None}] * 4  # JSON text in the tag
    finally:
        await good.stop()
        await bad.stop()


async def test_a_poll_round_over_thousands_of_waiting_devices_keeps_each_query_under_the_limit(flow_hub, connection):
    """The outcome condition (about 1,000 characters) plus an id list once made a 9,047-character query (400)."""
    from iot_flows.flows.rollout._mechanisms import mechanism_for
    from iot_flows.flows.rollout._poll import read_round

    outcome = mechanism_for(_request("7.4.0", "none")).outcome_condition()
    assert outcome and len(outcome) > 500
    news, marks = await read_round.fn(connection, {}, [f"absent-{i:05d}" for i in range(3000)], outcome)
    assert news.twins == {} and marks == {} and news.requests >= 5
