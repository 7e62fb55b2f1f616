"""A job interrupted by ``kill -9`` of the hub resumes: no device runs twice, every record ends terminal."""

from __future__ import annotations

import time

from tests.support import Device, HubProcess, Service, free_port, wait_until


def test_method_job_resumes_after_kill_9(make_db):
    db = make_db()
    ports = (free_port(), free_port())
    args = ("--job-device-concurrency", "1")
    hub = HubProcess(db, ports=ports, args=args)
    svc = Service(hub.base_url, hub.connection_string)
    devices = []
    for i in range(6):
        rec = svc.create_device(f"r-{i}")
        svc.request("PATCH", f"/twins/r-{i}", json_body={"tags": {"group": "restart"}})
        dev = Device("127.0.0.1", hub.mqtt_port, hub.hostname, f"r-{i}", rec["authentication"]["symmetricKey"]["primaryKey"])
        dev.calls = []  # type: ignore[attr-defined]
        dev.client.reconnect_delay_set(0.2, 0.5)

        def handler(name, payload, dev=dev):
            dev.calls.append(name)  # type: ignore[attr-defined]
            time.sleep(0.6)
            return 200, {"n": len(dev.calls)}  # type: ignore[attr-defined]

        dev.serve_methods(handler)
        assert dev.connect() == 0
        dev.subscribe_iothub()
        devices.append(dev)
    r = svc.request("PUT", "/jobs/v2/restart-job", json_body={
        "type": "scheduleDeviceMethod", "queryCondition": "tags.group = 'restart'", "maxExecutionTimeInSeconds": 120,
        "cloudToDeviceMethod": {"methodName": "reboot", "responseTimeoutInSeconds": 10, "connectTimeoutInSeconds": 20}})
    assert r.status_code == 200
    wait_until(lambda: sum(len(d.calls) for d in devices) >= 3, timeout=20)  # mid-job
    hub.kill9()
    svc.close()

    again = HubProcess(db, ports=ports, args=args)
    svc = Service(again.base_url, again.connection_string)
    try:
        job = wait_until(lambda: (j := svc.request("GET", "/jobs/v2/restart-job").json())["status"] != "running" and j,
                         timeout=60, interval=0.1)
        assert job["status"] == "completed", job
        stats = job["deviceJobStatistics"]
        assert stats["deviceCount"] == 6 and stats["runningCount"] == 0 and stats["pendingCount"] == 0
        assert stats["succeededCount"] + stats["failedCount"] == 6
        records = svc.request("POST", "/devices/query", json_body={
            "query": "SELECT * FROM devices.jobs WHERE devices.jobs.jobId = 'restart-job'"}).json()
        for rec in records:
            dev = next(d for d in devices if d.device_id == rec["deviceId"])
            assert len(dev.calls) <= 1, f"{dev.device_id} was invoked {len(dev.calls)} times"  # type: ignore[attr-defined]
            if rec["status"] == "failed":
                assert rec["error"]["code"] == "HubRestarted"
        assert sum(1 for r in records if r["status"] == "completed") >= 3  # the rest ran after the restart
    finally:
        for dev in devices:
            dev.disconnect()
        svc.close()
        assert again.terminate() == 0
