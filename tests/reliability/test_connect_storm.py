"""A fleet reconnecting at once (a hub restart, a node killed) does not exhaust the store.

Each MQTT CONNECT reads the device's stored session and records ``Connected``, its
SUBSCRIBE stores the session, and each disconnect records ``Disconnected``. On
PostgreSQL each of these took a pooled connection and a COMMIT of its own: 10,000
devices connecting in the soak queued on the 20-connection pool, waited out the acquire
timeout (503, so CONNACK 3) and came back as a reconnect storm. They now share batches
(group commit). Here a small pool with a short acquire timeout serves every step of
3,000 devices connecting and disconnecting at once, and what is stored is right.
"""

from __future__ import annotations

import asyncio
from typing import Any

from iot_flows.store import DeviceRecord, HubStore, open_store

DEVICES = 3000
NOW = "2026-01-01T00:00:00Z"
LATER = "2026-01-01T00:00:05Z"
FILTERS = ["$iothub/methods/POST/#", "$iothub/twin/res/#"]


async def _register(store: HubStore, ids: list[str]) -> None:
    async with store.transaction():
        for device_id in ids:
            await store.insert(DeviceRecord(device_id=device_id, generation_id="1", device_etag="e",
                                            status_updated_time=NOW))


async def _connect_and_leave(store: HubStore, device_id: str, leaves: bool) -> None:
    """What the hub stores for one device's CONNECT, SUBSCRIBE and (maybe) disconnect."""
    assert await store.get_subscriptions(device_id) == []
    await store.set_connection_state(device_id, "Connected", NOW)
    await store.set_subscriptions(device_id, FILTERS)
    if leaves:
        await store.set_connection_state(device_id, "Disconnected", LATER)


async def test_a_fleet_connecting_at_once_fits_a_small_pool(store_db: Any) -> None:
    # Two connections, 0.25 s to get one: one call per connection each would mostly time out.
    store = await open_store(store_db(), pool_size=2, acquire_timeout=0.25)
    try:
        ids = [f"storm-{i:05d}" for i in range(DEVICES)]
        await _register(store, ids)
        results = await asyncio.gather(*(_connect_and_leave(store, d, i % 2 == 1) for i, d in enumerate(ids)),
                                       return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, f"{len(errors)} of {DEVICES} devices failed, first {errors[0]!r}"
        for i, record in enumerate(await store.get_many(ids)):
            left = i % 2 == 1
            assert record.connection_state == ("Disconnected" if left else "Connected"), record.device_id
            assert record.connection_state_updated_time == (LATER if left else NOW), record.device_id
            assert record.last_activity_time == NOW, record.device_id  # a disconnect is no activity
        stored = await asyncio.gather(*(store.get_subscriptions(d) for d in ids))
        assert all(sorted(s) == FILTERS for s in stored)
        if store_db.backend == "postgresql":  # the calls shared statements
            batches = store.state_writes  # type: ignore[attr-defined]
            assert batches.items == DEVICES + DEVICES // 2
            assert batches.batches < batches.items / 4, (batches.batches, batches.items)
    finally:
        await store.close()


async def test_inside_a_transaction_the_calls_run_on_its_connection(store_db: Any) -> None:
    store = await open_store(store_db(), pool_size=2, acquire_timeout=0.25)
    try:
        await _register(store, ["tx-1"])
        async with store.transaction():
            await store.set_connection_state("tx-1", "Connected", NOW)
            await store.set_subscriptions("tx-1", FILTERS)
            assert sorted(await store.get_subscriptions("tx-1")) == FILTERS
        (record,) = await store.get_many(["tx-1"])
        assert record.connection_state == "Connected" and record.last_activity_time == NOW
    finally:
        await store.close()
