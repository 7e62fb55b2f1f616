"""Twin writes from several hub nodes on one database lose nothing.

Each node orders its own writers with a per-twin lock, but two nodes share only the
database: their read-modify-writes interleave (a real interleaving on PostgreSQL, where
every store call suspends). The store's compare-and-set on the twin ``version`` makes
the loser read again; without it, concurrent patches overwrite each other's keys.
"""

from __future__ import annotations

import asyncio
from typing import Any

from iot_flows.hub._sessions import SessionRegistry
from iot_flows.hub._twins import TwinService
from iot_flows.store import DeviceRecord, open_store

PATCHES_PER_NODE = 40


async def _register(store: Any, device_id: str) -> None:
    now = "2026-01-01T00:00:00Z"
    await store.insert(DeviceRecord(device_id=device_id, generation_id="1", device_etag="e", status_updated_time=now))


async def test_concurrent_patches_from_two_nodes_keep_every_key(make_db: Any, backend: str) -> None:
    db = make_db()
    stores = [await open_store(db), await open_store(db)]  # two nodes: two stores on one database
    try:
        await _register(stores[0], "shared")
        nodes = [TwinService(store, SessionRegistry()) for store in stores]
        reported = [
            nodes[i % 2].report("shared", {f"r{i}": i}) for i in range(2 * PATCHES_PER_NODE)
        ]  # fmt: skip
        desired = [
            nodes[i % 2].update("shared", {"properties": {"desired": {f"d{i}": i}}, "tags": {f"t{i}": i}})
            for i in range(2 * PATCHES_PER_NODE)
        ]  # fmt: skip
        await asyncio.gather(*reported, *desired)
        twin = await nodes[0].get("shared")
        n = 2 * PATCHES_PER_NODE
        assert sorted(twin.reported) == sorted(f"r{i}" for i in range(n))
        assert sorted(twin.desired) == sorted(f"d{i}" for i in range(n))
        assert sorted(twin.tags) == sorted(f"t{i}" for i in range(n))
        # every write counted exactly once: no version was handed out twice
        assert twin.reported_version == 1 + n
        assert twin.desired_version == 1 + n
        assert twin.twin_version == 1 + 2 * n
    finally:
        for store in stores:
            await store.close()


async def test_stale_compare_and_set_writes_nothing(make_db: Any, backend: str) -> None:
    store = await open_store(make_db())
    try:
        await _register(store, "cas")
        record = await store.get("cas")
        assert record is not None
        record.tags = {"a": 1}
        record.twin_version += 1
        assert await store.update_twin(record, expected_version=record.twin_version - 1)
        stale = await store.get("cas")
        assert stale is not None
        stale.tags = {"b": 2}
        assert not await store.update_twin(stale, expected_version=1)  # version is 2 now
        stored = await store.get("cas")
        assert stored is not None and stored.tags == {"a": 1} and stored.twin_version == 2
    finally:
        await store.close()
