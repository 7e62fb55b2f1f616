"""Jobs over two in-process hub nodes: one node runs each job, every device is reached
through the node that holds it, and a cancel on any node stops the run."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from iot_flows.jobs import JobSettings
from tests.cluster.conftest import Cluster, NatsServer
from tests.support import Device, Service, wait_until


@pytest.fixture
def slow_cluster(cluster_db: str, nats_server: NatsServer) -> Iterator[Cluster]:
    c = Cluster(cluster_db, nats_server.url)
    c.start_node("a", JobSettings(device_concurrency=1))
    c.start_node("b", JobSettings(device_concurrency=1))
    yield c
    c.stop()


def _fleet(cluster: Cluster, svc: Service, prefix: str, n: int, delay: float = 0.0) -> tuple[list[Device], dict[str, list[str]]]:
    calls: dict[str, list[str]] = {}
    devices = []
    for i in range(n):
        device_id = f"{prefix}-{i}"
        key = svc.create_device(device_id)["authentication"]["symmetricKey"]["primaryKey"]
        svc.request("PATCH", f"/twins/{device_id}", json_body={"tags": {"group": prefix}})
        node = "a" if i % 2 else "b"
        dev = cluster.device(node, device_id, key)
        calls[device_id] = []

        def handler(name: str, payload: Any, device_id: str = device_id, node: str = node) -> tuple[int, Any]:
            calls[device_id].append(name)
            time.sleep(delay)
            return 200, {"node": node}

        dev.serve_methods(handler)
        assert dev.connect() == 0
        dev.subscribe_iothub()
        devices.append(dev)
    return devices, calls


def _job_holder(cluster: Cluster, job_id: str) -> str | None:
    node = cluster.nodes["a"]
    return node.call(lambda: node.hub.cluster.store.job_holder(job_id))  # type: ignore[union-attr]


def _wait_done(svc: Service, job_id: str) -> dict[str, Any]:
    return wait_until(lambda: (j := svc.request("GET", f"/jobs/v2/{job_id}").json())["status"]
                      in ("completed", "failed", "cancelled") and j, timeout=60, interval=0.1)


def test_method_job_reaches_devices_on_both_nodes_once(cluster: Cluster) -> None:
    a, b = cluster.service("a"), cluster.service("b")
    _, calls = _fleet(cluster, a, "mj", 6, delay=0.2)
    r = b.request("PUT", "/jobs/v2/mj-job", json_body={
        "type": "scheduleDeviceMethod", "queryCondition": "tags.group = 'mj'", "maxExecutionTimeInSeconds": 60,
        "cloudToDeviceMethod": {"methodName": "ping", "responseTimeoutInSeconds": 10}})
    assert r.status_code == 200, r.text
    assert wait_until(lambda: _job_holder(cluster, "mj-job"), timeout=5) == "b"  # exactly one node runs it
    job = _wait_done(a, "mj-job")
    assert job["status"] == "completed"
    assert job["deviceJobStatistics"]["succeededCount"] == 6
    assert all(c == ["ping"] for c in calls.values()), calls
    records = a.request("POST", "/devices/query", json_body={
        "query": "SELECT * FROM devices.jobs WHERE devices.jobs.jobId = 'mj-job'"}).json()
    nodes = {r["deviceId"]: r["outcome"]["deviceMethodResponse"]["payload"]["node"] for r in records}
    assert set(nodes.values()) == {"a", "b"}
    assert _job_holder(cluster, "mj-job") is None  # released at the end


def test_twin_job_on_one_node_pushes_desired_to_devices_on_other(cluster: Cluster) -> None:
    a, b = cluster.service("a"), cluster.service("b")
    devices, _ = _fleet(cluster, a, "tj", 4)
    r = a.request("PUT", "/jobs/v2/tj-job", json_body={
        "type": "scheduleUpdateTwin", "queryCondition": "tags.group = 'tj'", "maxExecutionTimeInSeconds": 60,
        "updateTwin": {"etag": "*", "properties": {"desired": {"mode": "eco"}}}})
    assert r.status_code == 200, r.text
    assert _wait_done(b, "tj-job")["status"] == "completed"
    for dev in devices:
        msg = dev.wait_message(lambda m: m.topic.startswith("$iothub/twin/PATCH/properties/desired/"))
        assert json.loads(msg.payload) == {"mode": "eco", "$version": 2}
        with pytest.raises(TimeoutError):
            dev.wait_message(lambda m: m.topic.startswith("$iothub/twin/PATCH/"), timeout=0.3)


def test_cancel_on_other_node_stops_the_run(slow_cluster: Cluster) -> None:
    a, b = slow_cluster.service("a"), slow_cluster.service("b")
    _, calls = _fleet(slow_cluster, a, "cj", 8, delay=0.5)
    r = a.request("PUT", "/jobs/v2/cj-job", json_body={
        "type": "scheduleDeviceMethod", "queryCondition": "tags.group = 'cj'", "maxExecutionTimeInSeconds": 60,
        "cloudToDeviceMethod": {"methodName": "ping", "responseTimeoutInSeconds": 10}})
    assert r.status_code == 200
    wait_until(lambda: sum(len(c) for c in calls.values()) >= 2, timeout=20)
    assert b.request("POST", "/jobs/v2/cj-job/cancel").status_code == 200
    time.sleep(1.5)
    reached = sum(len(c) for c in calls.values())
    time.sleep(1.5)
    assert sum(len(c) for c in calls.values()) == reached  # node a stopped invoking
    job = a.request("GET", "/jobs/v2/cj-job").json()
    assert job["status"] == "cancelled"
    assert job["deviceJobStatistics"]["canceledCount"] >= 8 - reached - 1
    assert reached < 8


def test_wait_for_offline_device_connecting_on_other_node(cluster: Cluster) -> None:
    a, b = cluster.service("a"), cluster.service("b")
    key = a.create_device("off-1")["authentication"]["symmetricKey"]["primaryKey"]
    a.request("PATCH", "/twins/off-1", json_body={"tags": {"group": "off"}})
    r = a.request("PUT", "/jobs/v2/off-job", json_body={
        "type": "scheduleDeviceMethod", "queryCondition": "tags.group = 'off'", "maxExecutionTimeInSeconds": 30,
        "waitForOfflineDevices": True, "cloudToDeviceMethod": {"methodName": "ping", "responseTimeoutInSeconds": 10}})
    assert r.status_code == 200
    time.sleep(1.0)
    dev = cluster.device("b", "off-1", key)
    dev.serve_methods(lambda name, payload: (200, {"node": "b"}))
    assert dev.connect() == 0
    dev.subscribe_iothub()
    started = time.monotonic()
    job = _wait_done(b, "off-job")
    assert job["status"] == "completed" and job["deviceJobStatistics"]["succeededCount"] == 1
    assert time.monotonic() - started < 20  # reached when it connected, not at the job's deadline


def test_job_calls_to_the_other_node_travel_in_batches(cluster: Cluster) -> None:
    """The running node sends its calls for devices on the other node as a few NATS
    requests (one per node and batch), not one per device; each device is invoked once
    and a device's own failure stays its own."""
    a, b = cluster.service("a"), cluster.service("b")
    calls: dict[str, list[str]] = {}
    for i in range(24):
        device_id = f"bj-{i:02d}"
        key = a.create_device(device_id)["authentication"]["symmetricKey"]["primaryKey"]
        a.request("PATCH", f"/twins/{device_id}", json_body={"tags": {"group": "bj"}})
        dev = cluster.device("b", device_id, key)  # every device on node b
        calls[device_id] = []

        def handler(name: str, payload: Any, device_id: str = device_id) -> tuple[int, Any]:
            calls[device_id].append(name)
            return (500, {"broken": True}) if device_id == "bj-07" else (200, {"node": "b"})

        dev.serve_methods(handler)
        assert dev.connect() == 0
        dev.subscribe_iothub()
    node_a = cluster.nodes["a"].hub.cluster
    assert node_a is not None
    sent_before = node_a.job_calls.requests
    r = a.request("PUT", "/jobs/v2/bj-job", json_body={
        "type": "scheduleDeviceMethod", "queryCondition": "tags.group = 'bj'", "maxExecutionTimeInSeconds": 60,
        "cloudToDeviceMethod": {"methodName": "ping", "responseTimeoutInSeconds": 10}})
    assert r.status_code == 200, r.text
    job = _wait_done(b, "bj-job")
    stats = job["deviceJobStatistics"]
    assert (stats["succeededCount"], stats["failedCount"]) == (23, 1), job
    assert all(c == ["ping"] for c in calls.values()), calls  # each device invoked exactly once
    sent = node_a.job_calls.requests - sent_before
    assert 1 <= sent < 24 / 2, f"{sent} NATS requests for 24 devices on the other node"
    records = a.request("POST", "/devices/query", json_body={
        "query": "SELECT * FROM devices.jobs WHERE devices.jobs.jobId = 'bj-job'"}).json()
    failed = {r["deviceId"]: r["error"]["code"] for r in records if r["status"] == "failed"}
    assert failed == {"bj-07": "DeviceMethodFailed"}
    assert all(r["outcome"]["deviceMethodResponse"]["payload"] == {"node": "b"}
               for r in records if r["deviceId"] != "bj-07")
