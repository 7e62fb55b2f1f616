"""Two hub nodes (in-process, one SQLite file, real NATS) with real MQTT devices.

Any node accepts any device and any REST call: methods and desired patches reach the
device on the other node, one connection per identity across nodes, revocation drops
a device wherever it is, and every node's change stream sees every node's changes.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.cluster.conftest import Cluster, NatsServer
from tests.support import Device, Service, error_code, wait_until


def _register(svc: Service, device_id: str) -> str:
    return svc.create_device(device_id)["authentication"]["symmetricKey"]["primaryKey"]  # type: ignore[no-any-return]


def _online(cluster: Cluster, node: str, device_id: str, key: str) -> Device:
    dev = cluster.device(node, device_id, key)
    assert dev.connect() == 0
    dev.subscribe_iothub()
    dev.serve_methods(lambda name, payload: (200, {"name": name, "echo": payload, "node": node}))
    return dev


def _invoke(svc: Service, device_id: str, **body: Any) -> Any:
    return svc.request("POST", f"/twins/{device_id}/methods",
                       json_body={"methodName": "ping", "payload": {"n": 1}, "responseTimeoutInSeconds": 10, **body})


def test_method_on_other_node(cluster: Cluster) -> None:
    a, b = cluster.service("a"), cluster.service("b")
    key = _register(a, "m-1")
    _online(cluster, "a", "m-1", key)
    r = _invoke(b, "m-1")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": 200, "payload": {"name": "ping", "echo": {"n": 1}, "node": "a"}}
    # a device answering with an error status is data, relayed as such
    key2 = _register(a, "m-2")
    dev2 = cluster.device("a", "m-2", key2)
    assert dev2.connect() == 0
    dev2.subscribe_iothub()
    dev2.serve_methods(lambda name, payload: (500, {"why": "broken"}))
    r = _invoke(b, "m-2")
    assert r.status_code == 200 and r.json() == {"status": 500, "payload": {"why": "broken"}}
    # no node holds it: 404103 on both nodes
    _register(a, "m-offline")
    for svc in (a, b):
        r = _invoke(svc, "m-offline")
        assert r.status_code == 404 and error_code(r) == 404103


def test_method_waits_for_device_connecting_on_other_node(cluster: Cluster) -> None:
    a, b = cluster.service("a"), cluster.service("b")
    key = _register(a, "late-1")

    import threading

    def connect_later() -> None:
        time.sleep(1.0)
        _online(cluster, "a", "late-1", key)

    threading.Thread(target=connect_later, daemon=True).start()
    r = _invoke(b, "late-1", connectTimeoutInSeconds=10)
    assert r.status_code == 200, r.text
    assert r.json()["payload"]["node"] == "a"


def test_device_timeout_on_other_node_is_504101(cluster: Cluster) -> None:
    a, b = cluster.service("a"), cluster.service("b")
    key = _register(a, "slow-1")
    dev = cluster.device("a", "slow-1", key)
    assert dev.connect() == 0
    dev.subscribe_iothub()  # subscribed, never answers
    r = _invoke(b, "slow-1", responseTimeoutInSeconds=5)
    assert r.status_code == 504 and error_code(r) == 504101


def test_desired_patches_reach_device_on_other_node_once_in_order(cluster: Cluster) -> None:
    a, b = cluster.service("a"), cluster.service("b")
    key = _register(a, "d-1")
    dev = _online(cluster, "a", "d-1", key)
    for i in range(10):
        svc = b if i % 3 else a  # writes from both nodes, device on a
        r = svc.request("PATCH", "/twins/d-1", json_body={"properties": {"desired": {"step": i}}})
        assert r.status_code == 200
    got: list[int] = []
    while len(got) < 10:
        msg = dev.wait_message(lambda m: m.topic.startswith("$iothub/twin/PATCH/properties/desired/"), timeout=10)
        body = json.loads(msg.payload)
        assert f"$version={body['$version']}" in msg.topic
        assert body["step"] == body["$version"] - 2
        got.append(body["$version"])
    assert got == list(range(2, 12))
    with pytest.raises(TimeoutError):  # exactly once: nothing more arrives
        dev.wait_message(lambda m: m.topic.startswith("$iothub/twin/PATCH/"), timeout=1.0)


def test_takeover_across_nodes(cluster: Cluster) -> None:
    a, b = cluster.service("a"), cluster.service("b")
    key = _register(a, "t-1")
    first = _online(cluster, "a", "t-1", key)
    first.client.reconnect_delay_set(30, 60)  # keep paho from reconnecting during the test
    second = _online(cluster, "b", "t-1", key)
    assert first.disconnected.wait(10), "node a kept the old connection"
    r = _invoke(a, "t-1")
    assert r.status_code == 200 and r.json()["payload"]["node"] == "b"
    twin = wait_until(lambda: (t := b.request("GET", "/twins/t-1").json())["connectionState"] == "Connected" and t)
    assert twin["connectionState"] == "Connected"
    time.sleep(0.5)  # the old node's late disconnect must not overwrite the state
    assert a.request("GET", "/twins/t-1").json()["connectionState"] == "Connected"
    # desired patches now reach the new connection only
    a.request("PATCH", "/twins/t-1", json_body={"properties": {"desired": {"x": 1}}})
    msg = second.wait_message(lambda m: m.topic.startswith("$iothub/twin/PATCH/properties/desired/"))
    assert json.loads(msg.payload)["x"] == 1


def test_disable_and_delete_drop_device_on_other_node(cluster: Cluster) -> None:
    a, b = cluster.service("a"), cluster.service("b")
    key = _register(a, "x-1")
    dev = _online(cluster, "a", "x-1", key)
    dev.client.reconnect_delay_set(30, 60)
    etag = b.request("GET", "/devices/x-1").json()["etag"]
    r = b.request("PUT", "/devices/x-1", json_body={"deviceId": "x-1", "status": "disabled"},
                  headers={"If-Match": f'"{etag}"'})
    assert r.status_code == 200, r.text
    assert dev.disconnected.wait(10), "disabled device still connected on the other node"
    r = _invoke(b, "x-1")
    assert r.status_code == 404 and error_code(r) == 404103

    key2 = _register(a, "x-2")
    dev2 = _online(cluster, "a", "x-2", key2)
    dev2.client.reconnect_delay_set(30, 60)
    assert b.request("DELETE", "/devices/x-2", headers={"If-Match": "*"}).status_code == 204
    assert dev2.disconnected.wait(10), "deleted device still connected on the other node"


def test_rekey_drops_device_on_other_node(cluster: Cluster) -> None:
    a, b = cluster.service("a"), cluster.service("b")
    key = _register(a, "k-1")
    dev = _online(cluster, "a", "k-1", key)
    dev.client.reconnect_delay_set(30, 60)
    record = b.request("GET", "/devices/k-1").json()
    new_key = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo="
    record["authentication"]["symmetricKey"]["primaryKey"] = new_key
    r = b.request("PUT", "/devices/k-1", json_body=record, headers={"If-Match": f'"{record["etag"]}"'})
    assert r.status_code == 200, r.text
    assert dev.disconnected.wait(10), "re-keyed device still connected on the other node"
    again = _online(cluster, "b", "k-1", new_key)
    assert again.connected.is_set()


def test_change_stream_sees_other_nodes_changes(cluster: Cluster) -> None:
    a, b = cluster.service("a"), cluster.service("b")
    since = b.request("GET", "/iot-flows/changes?since=-1").json()["next"]
    key = _register(a, "c-1")
    _online(cluster, "a", "c-1", key)
    a.request("PATCH", "/twins/c-1", json_body={"tags": {"site": "x"}, "properties": {"desired": {"y": 2}}})

    def kinds() -> set[str]:
        changes = b.request("GET", f"/iot-flows/changes?since={since}&wait=1").json()["changes"]
        return {c["kind"] for c in changes if c.get("deviceId") == "c-1" and c.get("node") == "a"}

    assert wait_until(lambda: {"device.connected", "twin.tags", "twin.desired"} <= kinds(), timeout=10)


def test_losing_nats_keeps_same_node_traffic(cluster: Cluster, nats_server: NatsServer) -> None:
    a, b = cluster.service("a"), cluster.service("b")
    key = _register(a, "n-1")
    _online(cluster, "a", "n-1", key)
    assert _invoke(b, "n-1").status_code == 200
    nats_server.stop()
    wait_until(lambda: not cluster.nodes["b"].hub.cluster.bus.connected, timeout=10)  # type: ignore[union-attr]
    r = _invoke(b, "n-1")
    assert r.status_code in (503, 404) and error_code(r) in (503001, 404103), r.text
    r = _invoke(a, "n-1")  # same node: unaffected
    assert r.status_code == 200 and r.json()["payload"]["node"] == "a"
    nats_server.start()  # same port: both nodes reconnect by themselves
    wait_until(lambda: all(n.hub.cluster.bus.connected for n in cluster.nodes.values()), timeout=20)  # type: ignore[union-attr]
    r = wait_until(lambda: (x := _invoke(b, "n-1")).status_code == 200 and x, timeout=10, interval=0.2)
    assert r.json()["payload"]["node"] == "a"


def test_takeover_and_disable_during_nats_outage_apply_after_it(cluster: Cluster, nats_server: NatsServer) -> None:
    a, b = cluster.service("a"), cluster.service("b")
    key = _register(a, "o-1")
    first = _online(cluster, "a", "o-1", key)
    first.client.reconnect_delay_set(30, 60)
    key2 = _register(a, "o-2")
    other = _online(cluster, "a", "o-2", key2)
    other.client.reconnect_delay_set(30, 60)
    nats_server.stop()
    wait_until(lambda: not any(n.hub.cluster.bus.connected for n in cluster.nodes.values()), timeout=10)  # type: ignore[union-attr]
    second = _online(cluster, "b", "o-1", key)
    etag = b.request("GET", "/devices/o-2").json()["etag"]
    r = b.request("PUT", "/devices/o-2", json_body={"deviceId": "o-2", "status": "disabled"}, headers={"If-Match": f'"{etag}"'})
    assert r.status_code == 200
    nats_server.start()
    assert first.disconnected.wait(20), "old connection survived the outage"
    assert other.disconnected.wait(20), "disabled device survived the outage"
    assert second.connected.is_set()
    r = wait_until(lambda: (x := _invoke(a, "o-1")).status_code == 200 and x, timeout=10, interval=0.2)
    assert r.json()["payload"]["node"] == "b"


def test_a_burst_of_changes_reaches_the_other_node_complete_and_in_order(cluster: Cluster) -> None:
    """A node sends the changes of one loop tick as one NATS message: a burst of concurrent
    reported writes on node a shows up on node b's change stream, every one, in order."""
    a, b = cluster.service("a"), cluster.service("b")
    key = _register(a, "burst-1")
    dev = _online(cluster, "a", "burst-1", key)
    since = b.request("GET", "/iot-flows/changes?since=-1").json()["next"]
    writes = 120
    for n in range(writes):
        dev.client.publish(f"$iothub/twin/PATCH/properties/reported/?$rid=b{n}", json.dumps({"n": n}))  # no waiting

    def seen() -> list[int]:
        changes = b.request("GET", f"/iot-flows/changes?since={since}&limit=1000").json()["changes"]
        return [c["patch"]["n"] for c in changes if c.get("kind") == "twin.reported" and c.get("deviceId") == "burst-1"]

    assert wait_until(lambda: len(seen()) >= writes, timeout=20), seen()
    assert seen() == list(range(writes))
