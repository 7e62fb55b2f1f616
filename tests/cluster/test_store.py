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
    await a.renew()  # a comes back: the job stays with b
    assert await a.acquire_job("job-1") is False


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
