"""The cluster's shared rows (iot_flows.store ClusterStore): node leases, presence, job leases.

Two nodes' views of one real store; a node whose lease passes loses its claims and jobs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from iot_flows.store import ClusterStore, DeviceRecord, HubStore, open_cluster_store, open_store
from iot_flows.twin import utc_now

LEASE = 0.5


@pytest.fixture
async def store(cluster_db: str) -> AsyncIterator[HubStore]:
    s = await open_store(cluster_db)
    for device_id in ("d1", "d2"):
        now = utc_now()
        await s.insert(DeviceRecord(device_id=device_id, generation_id="1", device_etag="e", status_updated_time=now))
    yield s
    await s.close()


async def _nodes(store: HubStore) -> tuple[ClusterStore, ClusterStore]:
    return await open_cluster_store(store, "a", LEASE), await open_cluster_store(store, "b", LEASE)


async def test_first_node_is_alone_and_claims_follow_the_newest_connection(store: HubStore) -> None:
    a, b = await _nodes(store)
    assert await a.register() is True
    assert await b.register() is False
    await a.claim("d1")
    assert await b.holder("d1") == "a"
    await b.claim("d1")  # the device reconnected on b
    assert await a.holder("d1") == "b"
    assert await a.release("d1") is False  # a's late disconnect does not drop b's claim
    assert await b.held_by_others(["d1", "d2"]) == []
    assert await a.held_by_others(["d1", "d2"]) == ["d1"]
    assert await b.release("d1") is True
    assert await a.holder("d1") is None


async def test_dead_node_loses_claims_and_jobs(store: HubStore) -> None:
    a, b = await _nodes(store)
    await a.register()
    await b.register()
    await a.claim("d1")
    await store.set_connection_state("d1", "Connected", utc_now())
    assert await a.acquire_job("job-1") is True
    assert await b.acquire_job("job-1") is False  # a is alive
    assert await a.acquire_job("job-1") is True  # its own lease again
    await asyncio.sleep(LEASE + 0.1)  # a stops renewing (kill -9)
    await b.renew()
    assert await b.holder("d1") is None
    assert await b.job_holder("job-1") is None
    assert await b.expire_dead() == 1
    assert (await store.get("d1")).connection_state == "Disconnected"  # type: ignore[union-attr]
    assert await b.acquire_job("job-1") is True
    assert await b.job_holder("job-1") == "b"
    assert await a.renew() is False  # a comes back: fenced (its row is gone), the job stays with b
    assert await a.acquire_job("job-1") is False


async def test_a_late_renewal_keeps_what_nobody_took(store: HubStore) -> None:
    """Fencing by the lease row, not the wall clock: a node late to renew (busy, starved)
    whose row nobody deleted keeps its devices and jobs, and no node takes them meanwhile."""
    a, b = await _nodes(store)
    await a.register()
    await b.register()
    await a.claim("d1")
    assert await a.acquire_job("job-1") is True
    await asyncio.sleep(LEASE + 0.1)  # a is late; b has not fenced it yet
    await b.renew()
    assert await b.acquire_job("job-1") is False  # a's row is still there: the job is a's
    assert await a.renew() is True  # late, but still its own
    assert await b.expire_dead() == 0
    assert await b.holder("d1") == "a" and await b.job_holder("job-1") == "a"
    assert await a.acquire_job("job-1") is True


async def test_lease_renewer_on_its_own_connection_and_fenced_once_taken_over(store: HubStore) -> None:
    """The renewer (a thread's own connection) renews while the store's pool is exhausted,
    and answers False once another node fenced the node."""
    a, b = await _nodes(store)
    await a.register()
    await b.register()
    renewer = a.lease_renewer()
    held = []
    pool = getattr(store, "_pool", None)
    try:
        if pool is not None:  # PostgreSQL: every pooled connection taken by "device traffic"
            held = [await pool.acquire() for _ in range(pool.get_max_size())]
        await asyncio.sleep(LEASE + 0.1)
        assert await asyncio.wait_for(asyncio.to_thread(renewer.renew), 5) is True
    finally:
        for conn in held:
            await pool.release(conn)
    assert await b.expire_dead() == 0 and await b.holder("d1") is None
    await a.claim("d1")
    assert await b.holder("d1") == "a"  # renewed by the renewer: alive
    await asyncio.sleep(LEASE + 0.1)
    await b.renew()
    await b.expire_dead()  # b fences a
    assert await asyncio.to_thread(renewer.renew) is False
    await asyncio.to_thread(renewer.close)


async def test_leave_releases_everything_at_once(store: HubStore) -> None:
    a, b = await _nodes(store)
    await a.register()
    await b.register()
    await a.claim("d2")
    await store.set_connection_state("d2", "Connected", utc_now())
    await a.acquire_job("job-2")
    await a.leave()
    assert await b.holder("d2") is None
    assert (await store.get("d2")).connection_state == "Disconnected"  # type: ignore[union-attr]
    assert await b.acquire_job("job-2") is True
    assert await b.register() is True  # a is gone: b is alone
