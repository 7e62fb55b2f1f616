"""Degraded storage with two nodes (issue 12 item 6 on a cluster): while another session holds
``LOCK TABLE devices`` on the shared PostgreSQL, both nodes answer REST writes 503 (503001)
and a device's reported PATCH status 503 with the device still connected to its node; once
the lock goes, both serve writes again by themselves and each sees the other's writes.
The lock is held for less than the node lease (a database locked longer than the lease is
another case: nodes cannot renew and presume each other dead)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from iot_flows.hub import HubSettings
from iot_flows.hub._embedded import EmbeddedHub
from tests.reliability.test_degraded_storage import PgSession, assert_unavailable
from tests.support import Device, Service

API = "api-version=2021-04-12"


@pytest.fixture
def two_nodes(pg_cluster: Any, nats_server: Any) -> Iterator[tuple[str, list[EmbeddedHub]]]:
    db = str(pg_cluster.create_database(f"degraded_nodes_{os.getpid()}_{time.monotonic_ns()}"))
    nodes: list[EmbeddedHub] = []
    try:
        for node_id in ("a", "b"):
            nodes.append(EmbeddedHub(HubSettings(mqtt_port=0, http_port=0, db=db, bus=nats_server.url,
                                                 node_id=node_id, node_lease_seconds=30)).start())  # fmt: skip
        yield db, nodes
    finally:
        for node in nodes:
            node.stop()


def test_a_locked_shared_database_is_503_on_both_nodes_and_both_resume(two_nodes: tuple[str, list[EmbeddedHub]]) -> None:
    db, (a, b) = two_nodes
    svc_a, svc_b = Service(a.base_url, a.connection_string()), Service(b.base_url, b.connection_string())
    key = svc_a.create_device("degraded-n1")["authentication"]["symmetricKey"]["primaryKey"]
    dev = Device("127.0.0.1", b.hub.mqtt_port, b.hub.settings.hostname, "degraded-n1", key)
    assert dev.connect() == 0
    dev.subscribe_iothub()
    other = PgSession(db)
    try:
        other.execute("BEGIN")
        other.execute("LOCK TABLE devices IN ACCESS EXCLUSIVE MODE")
        for svc in (svc_a, svc_b):
            assert_unavailable(svc.request("PATCH", f"/twins/degraded-n1?{API}",
                                           json_body={"properties": {"desired": {"probe": "refused"}}}))  # fmt: skip
        status, topic = dev.patch_reported({"probe": "refused"})
        assert status == 503, topic
        assert dev.client.is_connected() and b.hub.mqtt.connection_count == 1
        other.execute("COMMIT")
        r = svc_a.request("PATCH", f"/twins/degraded-n1?{API}", json_body={"properties": {"desired": {"probe": "a"}}})
        assert r.status_code == 200, r.text
        assert dev.patch_reported({"probe": "b"})[0] == 204
        for svc in (svc_a, svc_b):
            twin = svc.request("GET", f"/twins/degraded-n1?{API}").json()
            assert twin["properties"]["desired"]["probe"] == "a" and twin["properties"]["reported"]["probe"] == "b"
        # a method from node a still reaches the device held by node b
        dev.serve_methods(lambda name, payload: (200, {"ok": name}))
        r = svc_a.request("POST", f"/twins/degraded-n1/methods?{API}", json_body={"methodName": "m", "responseTimeoutInSeconds": 10})
        assert r.status_code == 200 and r.json()["payload"] == {"ok": "m"}, r.text
    finally:
        other.close()
        dev.disconnect()
        svc_a.close()
        svc_b.close()
