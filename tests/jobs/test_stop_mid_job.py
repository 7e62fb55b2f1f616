"""Stopping a hub in the middle of a method job leaves no task behind.

The job runs as a task (its per-device requests are futures, or tasks for devices it
waits for); a hub stop must cancel and await them (a task still pending when the loop
closes is logged by asyncio as "Task was destroyed but it is pending!"). The request
that was in flight stays ``running`` in the store and is failed with ``HubRestarted``
when the job resumes.
"""

from __future__ import annotations

import asyncio

from iot_flows.hub import Hub, HubSettings
from iot_flows.jobs import DeviceJobStatus, JobSettings
from tests.support import Device


def _settings(db: str) -> HubSettings:
    return HubSettings(mqtt_port=0, http_port=0, db=db, jobs=JobSettings(device_concurrency=2))


async def test_stop_mid_job_cancels_and_awaits_the_fan_out(make_db):
    db = make_db()
    hub = Hub(_settings(db))
    await hub.start()
    mine: set[asyncio.Task[object]] = set()
    dev: Device | None = None
    try:
        before = asyncio.all_tasks()
        record = await hub.registry.put("stop-1", {"deviceId": "stop-1"}, if_match=None)
        await hub.twins.update("stop-1", {"tags": {"group": "stop"}}, if_match=None)
        dev = Device("127.0.0.1", hub.mqtt_port, hub.settings.hostname, "stop-1", record.primary_key)
        assert await asyncio.to_thread(dev.connect) == 0
        await asyncio.to_thread(dev.subscribe_iothub)  # subscribed to methods, never answers
        await hub.jobs.create("stop-job", {
            "type": "scheduleDeviceMethod", "queryCondition": "tags.group = 'stop'", "maxExecutionTimeInSeconds": 300,
            "cloudToDeviceMethod": {"methodName": "slow", "responseTimeoutInSeconds": 120}})
        request = await asyncio.to_thread(dev.wait_message, lambda m: m.topic.startswith("$iothub/methods/POST/slow/"))
        assert request.topic.startswith("$iothub/methods/POST/slow/")  # the job is mid-flight
        mine = asyncio.all_tasks() - before
        assert "job-stop-job" in {t.get_name() for t in mine}
        assert hub.methods.pending_count == 1  # the call is in flight
    finally:
        await hub.stop()
    left = [t.get_name() for t in mine if not t.done()]
    assert left == [], f"tasks still pending after Hub.stop(): {left}"
    assert dev is not None
    dev.disconnect()

    again = Hub(_settings(db))
    await again.start()
    try:
        for _ in range(400):
            doc = await again.jobs.get("stop-job")
            if doc["status"] != "running":
                break
            await asyncio.sleep(0.05)
        assert doc["status"] == "completed", doc
        failed = await again.jobs.repository.device_ids("stop-job", DeviceJobStatus.FAILED)
        assert failed == ["stop-1"]
    finally:
        await again.stop()
