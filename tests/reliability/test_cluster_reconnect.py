"""A device that reconnects to the other hub node while a method waits for it gets the method.

Seen in a 500-device run on two nodes: job records failed with DeviceNotOnline for
devices that had reconnected within seconds, to the other node. IoT Hub's contract
(docs/iothub-reference.md §5): a method waits up to ``connectTimeoutInSeconds`` for
the device to connect; a device that connects within it, to any node, is invoked. So
here the device is connected to node b but not yet subscribed to methods (the call is
routed to b, which waits for it), then it moves to node a and subscribes there: the
job's call and a direct method both reach it, once, on a; and a device that never
comes back fails with 404103 "Timed out waiting for device to connect." (the correct
failure), after its connect timeout.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.conftest import Cluster, NatsServer, cluster_db, nats_server  # noqa: F401 - fixtures
from tests.support import Device, Service, error_code, wait_until

CONNECT_TIMEOUT = 20  #: connectTimeoutInSeconds of the calls; the devices move after ~2 s


@pytest.fixture
def two_nodes(cluster_db: str, nats_server: NatsServer) -> Iterator[Cluster]:  # noqa: F811 - fixtures
    c = Cluster(cluster_db, nats_server.url)
    c.start_node("a")
    c.start_node("b")
    yield c
    c.stop()


def _connected_not_subscribed(cluster: Cluster, svc: Service, device_id: str) -> tuple[Device, str]:
    """The device on node b, connected but without its method subscription (yet)."""
    key = svc.create_device(device_id)["authentication"]["symmetricKey"]["primaryKey"]
    svc.request("PATCH", f"/twins/{device_id}", json_body={"tags": {"group": device_id.split("-")[0]}})
    dev = cluster.device("b", device_id, key)
    assert dev.connect() == 0
    return dev, key


def _held_by(cluster: Cluster, device_id: str) -> str | None:
    node = cluster.nodes["a"]
    return node.call(lambda: node.hub.cluster.store.holder(device_id))  # type: ignore[union-attr]


def _move_to_a(cluster: Cluster, old: Device, device_id: str, key: str, calls: list[str]) -> None:
    """Leave node b, connect to node a, answer methods there."""
    old.disconnect()
    dev = cluster.device("a", device_id, key)

    def handler(name: str, payload: Any) -> tuple[int, Any]:
        calls.append(name)
        return 200, {"node": "a"}

    dev.serve_methods(handler)
    assert dev.connect() == 0
    dev.subscribe_iothub()


def test_job_method_reaches_a_device_that_moved_to_the_other_node(two_nodes: Cluster) -> None:
    a = two_nodes.service("a")
    n = 6
    fleet = {f"mv-{i}": _connected_not_subscribed(two_nodes, a, f"mv-{i}") for i in range(n)}
    assert wait_until(lambda: all(_held_by(two_nodes, d) == "b" for d in fleet), timeout=10)
    calls: dict[str, list[str]] = {d: [] for d in fleet}
    r = a.request("PUT", "/jobs/v2/mv-job", json_body={
        "type": "scheduleDeviceMethod", "queryCondition": "tags.group = 'mv'", "maxExecutionTimeInSeconds": 120,
        "cloudToDeviceMethod": {"methodName": "ping", "responseTimeoutInSeconds": 10,
                                "connectTimeoutInSeconds": CONNECT_TIMEOUT}})
    assert r.status_code == 200, r.text
    time.sleep(2)  # the job's calls are out, waiting for the devices
    for device_id, (dev, key) in fleet.items():
        _move_to_a(two_nodes, dev, device_id, key, calls[device_id])
    job = wait_until(lambda: (j := a.request("GET", "/jobs/v2/mv-job").json())["status"]
                     in ("completed", "failed", "cancelled") and j, timeout=CONNECT_TIMEOUT + 60, interval=0.2)
    records = a.request("POST", "/devices/query", json_body={
        "query": "SELECT * FROM devices.jobs WHERE devices.jobs.jobId = 'mv-job'"}).json()
    failed = {r["deviceId"]: r.get("error") for r in records if r["status"] != "completed"}
    assert not failed, failed
    assert job["deviceJobStatistics"]["succeededCount"] == n, job
    assert all(c == ["ping"] for c in calls.values()), calls  # each device invoked once, on node a


def test_direct_method_reaches_a_device_that_moved_to_the_other_node(two_nodes: Cluster) -> None:
    a = two_nodes.service("a")
    dev, key = _connected_not_subscribed(two_nodes, a, "dm-0")
    assert wait_until(lambda: _held_by(two_nodes, "dm-0") == "b", timeout=10)
    calls: list[str] = []
    mover = threading.Timer(2.0, _move_to_a, (two_nodes, dev, "dm-0", key, calls))
    mover.start()
    try:
        r = a.request("POST", "/twins/dm-0/methods", json_body={
            "methodName": "ping", "payload": {}, "responseTimeoutInSeconds": 10,
            "connectTimeoutInSeconds": CONNECT_TIMEOUT})
    finally:
        mover.join()
    assert r.status_code == 200, r.text
    assert r.json()["payload"] == {"node": "a"} and calls == ["ping"]


def test_a_device_that_never_comes_back_fails_with_404103_after_its_connect_timeout(two_nodes: Cluster) -> None:
    a = two_nodes.service("a")
    dev, _ = _connected_not_subscribed(two_nodes, a, "gone-0")
    assert wait_until(lambda: _held_by(two_nodes, "gone-0") == "b", timeout=10)
    threading.Timer(1.0, dev.disconnect).start()
    t0 = time.monotonic()
    r = a.request("POST", "/twins/gone-0/methods", json_body={
        "methodName": "ping", "payload": {}, "responseTimeoutInSeconds": 5, "connectTimeoutInSeconds": 3})
    assert r.status_code == 404 and error_code(r) == 404103, r.text
    assert "Timed out waiting for device to connect" in r.text
    assert time.monotonic() - t0 >= 3  # it waited out connectTimeoutInSeconds
