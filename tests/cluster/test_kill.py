"""Hub nodes as ``iot-flows hub serve --bus ...`` processes: ``kill -9`` of one node.

Its presence claims expire with its lease (methods answer 404103 until the device
reconnects elsewhere), and another node resumes its job: every device invoked at most
once, in-flight calls failed/HubRestarted, statistics equal to the records.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from iot_flows._sas import ConnectionString
from tests.cluster.conftest import NatsServer
from tests.support import CLI, Device, HubProcess, Service, error_code, free_port, wait_until

LEASE = "2"


def _node(db: str | Path, nats: NatsServer, node_id: str, *extra: str) -> HubProcess:
    return HubProcess(db, args=("--bus", nats.url, "--node-id", node_id, "--node-lease-seconds", LEASE, *extra))


def _device(hub: HubProcess, device_id: str, key: str, calls: list[str], delay: float = 0.0) -> Device:
    dev = Device("127.0.0.1", hub.mqtt_port, ConnectionString.parse(hub.connection_string).host_name, device_id, key)

    def handler(name: str, payload: Any) -> tuple[int, Any]:
        calls.append(name)
        time.sleep(delay)
        return 200, {"port": hub.mqtt_port}

    dev.serve_methods(handler)
    assert dev.connect() == 0
    dev.subscribe_iothub()
    return dev


def _invoke(svc: Service, device_id: str) -> Any:
    return svc.request("POST", f"/twins/{device_id}/methods",
                       json_body={"methodName": "ping", "payload": None, "responseTimeoutInSeconds": 10})


def test_killed_node_loses_presence_then_device_works_on_other_node(cluster_db: str, nats_server: NatsServer) -> None:
    db = cluster_db
    a = _node(db, nats_server, "a")
    b = _node(db, nats_server, "b")
    svc_b = Service(b.base_url, b.connection_string)
    try:
        key = svc_b.create_device("p-1")["authentication"]["symmetricKey"]["primaryKey"]
        calls: list[str] = []
        dev = _device(a, "p-1", key, calls)
        assert _invoke(svc_b, "p-1").json()["payload"] == {"port": a.mqtt_port}
        a.kill9()
        dev.drop()
        r = _invoke(svc_b, "p-1")
        assert r.status_code == 404 and error_code(r) == 404103, r.text
        # within the keep-alive window the dead node's claim is gone and the state recorded
        twin = wait_until(lambda: (t := svc_b.request("GET", "/twins/p-1").json())["connectionState"] == "Disconnected" and t,
                          timeout=float(LEASE) * 3)
        assert twin["connectionState"] == "Disconnected"
        again = _device(b, "p-1", key, calls)
        r = _invoke(svc_b, "p-1")
        assert r.status_code == 200 and r.json()["payload"] == {"port": b.mqtt_port}
        again.disconnect()
    finally:
        svc_b.close()
        if a.proc.poll() is None:
            a.kill9()
        b.terminate()


def test_job_resumes_on_other_node_after_kill_9(cluster_db: str, nats_server: NatsServer) -> None:
    db = cluster_db
    a = _node(db, nats_server, "a", "--job-device-concurrency", "1")
    b = _node(db, nats_server, "b", "--job-device-concurrency", "1")
    svc_a = Service(a.base_url, a.connection_string)
    svc_b = Service(b.base_url, b.connection_string)
    calls: dict[str, list[str]] = {}
    keys: dict[str, str] = {}
    devices: list[Device] = []
    try:
        for i in range(8):
            device_id = f"j-{i}"
            keys[device_id] = svc_b.create_device(device_id)["authentication"]["symmetricKey"]["primaryKey"]
            svc_b.request("PATCH", f"/twins/{device_id}", json_body={"tags": {"group": "kill"}})
            calls[device_id] = []
            devices.append(_device(a if i % 2 else b, device_id, keys[device_id], calls[device_id], delay=0.5))
        r = svc_a.request("PUT", "/jobs/v2/kill-job", json_body={
            "type": "scheduleDeviceMethod", "queryCondition": "tags.group = 'kill'", "maxExecutionTimeInSeconds": 120,
            "cloudToDeviceMethod": {"methodName": "reboot", "responseTimeoutInSeconds": 10, "connectTimeoutInSeconds": 20}})
        assert r.status_code == 200, r.text
        wait_until(lambda: sum(len(c) for c in calls.values()) >= 3, timeout=30)  # mid-job, running on a
        a.kill9()
        for i, dev in enumerate(devices):
            if i % 2:  # a's devices reconnect to b
                dev.drop()
                devices[i] = _device(b, dev.device_id, keys[dev.device_id], calls[dev.device_id], delay=0.5)
        job = wait_until(lambda: (j := svc_b.request("GET", "/jobs/v2/kill-job").json())["status"] != "running" and j,
                         timeout=90, interval=0.2)
        assert job["status"] == "completed", job
        records = svc_b.request("POST", "/devices/query", json_body={
            "query": "SELECT * FROM devices.jobs WHERE devices.jobs.jobId = 'kill-job'"}).json()
        assert len(records) == 8
        for rec in records:
            assert len(calls[rec["deviceId"]]) <= 1, f"{rec['deviceId']} invoked {len(calls[rec['deviceId']])} times"
            assert rec["status"] in ("completed", "failed"), rec
            if rec["status"] == "failed":
                assert rec["error"]["code"] == "HubRestarted", records
        counts = Counter(rec["status"] for rec in records)
        stats = job["deviceJobStatistics"]
        assert stats == {"deviceCount": 8, "succeededCount": counts["completed"], "failedCount": counts["failed"],
                         "runningCount": 0, "pendingCount": 0, "canceledCount": 0}
        assert counts["completed"] >= 4  # the rest ran on node b
    finally:
        for dev in devices:
            dev.disconnect()
        svc_a.close()
        svc_b.close()
        if a.proc.poll() is None:
            a.kill9()
        b.terminate()


def test_unreachable_nats_at_start_is_one_line_and_exit_1(tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    out = subprocess.run([*CLI, "hub", "serve", "--db", str(tmp_path / "h.db"), "--mqtt-port", "0", "--http-port", "0",
                          "--bus", url], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "NATS" in lines[0] and url in lines[0], out.stderr
    out = subprocess.run([*CLI, "hub", "serve", "--db", str(tmp_path / "h.db"), "--mqtt-port", "0", "--http-port", "0",
                          "--bus", "http://nowhere"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1 and "nats://" in out.stderr


def test_node_id_in_use_is_refused(tmp_path: Path, nats_server: NatsServer) -> None:
    a = _node(tmp_path / "hub.db", nats_server, "same")
    try:
        out = subprocess.run([*CLI, "hub", "serve", "--db", str(tmp_path / "hub.db"), "--mqtt-port", "0", "--http-port", "0",
                              "--bus", nats_server.url, "--node-id", "same"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 1
        assert len(out.stderr.strip().splitlines()) == 1 and "'same' is in use" in out.stderr, out.stderr
    finally:
        a.terminate()


def test_paused_node_loses_its_job_and_stops_working_on_it_when_resumed(cluster_db: str, nats_server: NatsServer) -> None:
    """``kill -STOP`` of the node running a job for longer than its lease: another node
    adopts the job; after ``kill -CONT`` the paused node invokes no device and writes no
    record of that job any more (no device invoked twice, statistics equal the records).

    Before the fix the resumed node flushed the outcomes it had collected before the pause
    over the adopting node's failed/HubRestarted records."""
    a = _node(cluster_db, nats_server, "a", "--job-device-concurrency", "1")
    b = _node(cluster_db, nats_server, "b", "--job-device-concurrency", "1")
    svc_a = Service(a.base_url, a.connection_string)
    svc_b = Service(b.base_url, b.connection_string)
    calls: dict[str, list[str]] = {}
    devices: list[Device] = []
    paused = False
    try:
        for i in range(10):
            device_id = f"s-{i}"
            key = svc_b.create_device(device_id)["authentication"]["symmetricKey"]["primaryKey"]
            svc_b.request("PATCH", f"/twins/{device_id}", json_body={"tags": {"group": "stop"}})
            calls[device_id] = []
            devices.append(_device(b, device_id, key, calls[device_id], delay=0.4))  # all on node b
        r = svc_a.request("PUT", "/jobs/v2/stop-job", json_body={
            "type": "scheduleDeviceMethod", "queryCondition": "tags.group = 'stop'", "maxExecutionTimeInSeconds": 120,
            "cloudToDeviceMethod": {"methodName": "reboot", "responseTimeoutInSeconds": 10}})
        assert r.status_code == 200, r.text
        wait_until(lambda: sum(len(c) for c in calls.values()) >= 2, timeout=30)  # mid-job, running on a
        a.proc.send_signal(signal.SIGSTOP)
        paused = True
        paused_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
        invoked_by_a = {d for d, c in calls.items() if c}
        # b adopts the job once a's lease has passed, and goes on with it
        before = sum(len(c) for c in calls.values())
        wait_until(lambda: sum(len(c) for c in calls.values()) >= before + 2, timeout=30)
        a.proc.send_signal(signal.SIGCONT)
        paused = False
        job = wait_until(lambda: (j := svc_b.request("GET", "/jobs/v2/stop-job").json())["status"] != "running" and j,
                         timeout=90, interval=0.2)
        time.sleep(float(LEASE) * 2)  # whatever node a would still do after waking up, it does by now
        assert job["status"] == "completed", job
        twice = {d: len(c) for d, c in calls.items() if len(c) > 1}
        assert not twice, f"invoked more than once: {twice}"
        records = svc_b.request("POST", "/devices/query", json_body={
            "query": "SELECT * FROM devices.jobs WHERE devices.jobs.jobId = 'stop-job'"}).json()
        assert len(records) == 10
        counts = Counter(rec["status"] for rec in records)
        job = svc_b.request("GET", "/jobs/v2/stop-job").json()
        # what node a invoked before the pause, it recorded before the pause; anything still
        # in flight then is b's to judge (failed/HubRestarted), never a late write by node a
        for rec in records:
            if rec["deviceId"] in invoked_by_a:
                late = rec["lastUpdatedDateTimeUtc"] > paused_at and rec["status"] != "failed"
                assert not late, f"node a wrote {rec} after it was paused at {paused_at}"
        stats = job["deviceJobStatistics"]
        assert stats == {"deviceCount": 10, "succeededCount": counts["completed"], "failedCount": counts["failed"],
                         "runningCount": 0, "pendingCount": 0, "canceledCount": 0}, (stats, records)
        for rec in records:
            if rec["status"] == "failed":
                assert rec["error"]["code"] == "HubRestarted", records
        assert a.proc.poll() is None and svc_a.request("GET", "/jobs/v2/stop-job").status_code == 200  # a lives on
    finally:
        if paused:
            a.proc.send_signal(signal.SIGCONT)
        for dev in devices:
            dev.disconnect()
        svc_a.close()
        svc_b.close()
        a.terminate()
        b.terminate()
