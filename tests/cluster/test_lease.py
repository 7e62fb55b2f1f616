"""A node's lease under load: renewed from its own thread on its own store connection.

A node whose event loop is busy (CPU starvation) and whose store pool is exhausted by
device traffic for longer than its lease must still renew it: the other node must not
presume it dead and take its devices. Fencing is by the lease row: a node taken over
learns it at its next renewal.
"""

from __future__ import annotations

import time
from typing import Any

from tests.cluster.conftest import LEASE, Cluster
from tests.support import wait_until


def _online(cluster: Cluster, node: str, device_id: str) -> None:
    svc = cluster.service(node)
    key = svc.create_device(device_id)["authentication"]["symmetricKey"]["primaryKey"]
    dev = cluster.device(node, device_id, key)
    assert dev.connect() == 0
    dev.subscribe_iothub()
    dev.serve_methods(lambda name, payload: (200, {"node": node}))


def _invoke(cluster: Cluster, node: str, device_id: str) -> Any:
    return cluster.service(node).request("POST", f"/twins/{device_id}/methods",
                                         json_body={"methodName": "ping", "payload": {}, "responseTimeoutInSeconds": 10})


def test_busy_node_with_its_pool_exhausted_keeps_its_lease_and_devices(cluster: Cluster) -> None:
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    _online(cluster, "a", "busy-1")
    assert _invoke(cluster, "b", "busy-1").json()["payload"] == {"node": "a"}
    node_a = a.hub.cluster
    assert node_a is not None and node_a.lease_keeper is not None
    renewals = node_a.lease_keeper.renewals

    async def starve() -> None:
        """Every pooled connection held (PostgreSQL) and the loop blocked, for 2.5 leases."""
        pool = getattr(a.hub.store, "_pool", None)
        held = [await pool.acquire() for _ in range(pool.get_max_size())] if pool is not None else []
        try:
            time.sleep(2.5 * LEASE)  # a busy event loop: nothing else runs on it meanwhile
        finally:
            for conn in held:
                await pool.release(conn)

    a.call(starve, timeout=30)
    assert node_a.lease_keeper.renewals > renewals  # renewed meanwhile, from its own thread
    assert not node_a.lease_keeper.fenced.is_set() and node_a.valid()
    cluster_b = b.hub.cluster
    assert cluster_b is not None
    assert b.call(lambda: cluster_b.store.holder("busy-1")) == "a"  # b did not take a's device
    r = _invoke(cluster, "b", "busy-1")
    assert r.status_code == 200 and r.json()["payload"] == {"node": "a"}, r.text


def test_a_node_taken_over_learns_it_at_its_next_renewal_and_joins_again(cluster: Cluster) -> None:
    """Another node fenced node a (deleted its lease row, as after a pause longer than the
    lease): a stops holding its devices (they reconnect and are claimed again) and registers again."""
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    _online(cluster, "a", "fenced-1")
    node_a = a.hub.cluster
    assert node_a is not None and node_a.lease_keeper is not None

    async def fence_a() -> None:
        store = b.hub.store
        if store.dialect == "sqlite":
            store._conn.execute("DELETE FROM cluster_nodes WHERE node_id = 'a'")  # type: ignore[attr-defined]
        else:
            await store._pool.execute("DELETE FROM cluster_nodes WHERE node_id = 'a'")  # type: ignore[attr-defined]

    b.call(fence_a)
    # a's next renewal finds its row gone: it closes its device connections and joins again
    wait_until(lambda: "fenced-1" not in a.call_soon(a.hub.sessions.connected_ids))
    wait_until(lambda: node_a.valid())  # registered again, renewing
    _online_again = cluster.devices[-1]
    assert _online_again.connect() == 0  # the device reconnects: claimed by the node that joined again
    _online_again.subscribe_iothub()
    cluster_b = b.hub.cluster
    assert cluster_b is not None
    wait_until(lambda: b.call(lambda: cluster_b.store.holder("fenced-1")) == "a")
