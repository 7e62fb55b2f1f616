"""One writer per twin at a time (issue 13 replaced the per-twin asyncio.Lock by a queue of
turns): concurrent reported PATCHes of one twin all apply, in arrival order; a writer cancelled
while waiting, or right after it was handed its turn, never blocks the ones behind it."""

from __future__ import annotations

import asyncio
from typing import Any

from iot_flows.hub._sessions import SessionRegistry
from iot_flows.hub._twins import TwinService
from iot_flows.store import DeviceRecord, open_store


async def _service(make_db: Any) -> tuple[Any, TwinService]:
    store = await open_store(make_db())
    await store.insert(DeviceRecord(device_id="d", generation_id="1", device_etag="e", status_updated_time="t"))
    return store, TwinService(store, SessionRegistry())


async def test_concurrent_reports_of_one_twin_all_apply_in_order(make_db: Any) -> None:
    store, twins = await _service(make_db)
    try:
        versions = await asyncio.gather(*(twins.report("d", {"n": i}) for i in range(50)))
        assert versions == list(range(versions[0], versions[0] + 50))  # one after another, in arrival order
        record = await store.get("d")
        assert record is not None and record.reported["n"] == 49 and record.reported_version == versions[-1]
        assert twins._locks == {}  # nothing left behind
    finally:
        await store.close()


async def test_cancelled_writers_do_not_block_the_next(make_db: Any) -> None:
    store, twins = await _service(make_db)
    try:
        first = asyncio.ensure_future(twins.report("d", {"a": 1}))
        waiting = [asyncio.ensure_future(twins.report("d", {f"w{i}": i})) for i in range(4)]
        await asyncio.sleep(0)  # all queued behind the first
        waiting[1].cancel()  # cancelled while waiting
        await first
        waiting[0].cancel()  # cancelled after being handed its turn (or while waiting)
        results = await asyncio.gather(*waiting, return_exceptions=True)
        assert isinstance(results[0], asyncio.CancelledError) or isinstance(results[0], int)
        assert isinstance(results[1], asyncio.CancelledError)
        assert isinstance(results[2], int) and isinstance(results[3], int)
        assert await asyncio.wait_for(twins.report("d", {"after": True}), 5) > results[3]
        record = await store.get("d")
        assert record is not None and record.reported.get("w3") == 3 and "w1" not in record.reported
        assert twins._locks == {}
    finally:
        await store.close()
