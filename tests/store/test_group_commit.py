"""Group commit of twin writes: 1,000 concurrent reported writers, and no acknowledgement
before COMMIT.

1,000 devices writing reported properties at once used to exhaust the PostgreSQL pool
(each writer held a connection for its own commit) and some got 503. Writers now share
batches: one ``UPDATE ... FROM unnest`` and one COMMIT per batch, each writer answered
only after that commit. These tests run the hub's twin service on a real store.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from iot_flows._exceptions import ServiceUnavailableError
from iot_flows.hub._sessions import SessionRegistry
from iot_flows.hub._twins import TwinService
from iot_flows.store import DeviceRecord, HubStore, open_store

WRITERS = 1000
ROUNDS = 4
NOW = "2026-01-01T00:00:00Z"


async def _register(store: HubStore, n: int, prefix: str = "gc") -> list[str]:
    ids = [f"{prefix}-{i:04d}" for i in range(n)]
    async with store.transaction():
        for device_id in ids:
            await store.insert(
                DeviceRecord(device_id=device_id, generation_id="1", device_etag="e", status_updated_time=NOW)
            )
    return ids


async def test_a_thousand_concurrent_reported_writers_all_succeed(make_db: Any, backend: str) -> None:
    store = await open_store(make_db())  # default pool: 20 connections, 10 s acquire timeout
    try:
        ids = await _register(store, WRITERS)
        twins = TwinService(store, SessionRegistry())
        for r in range(1, ROUNDS + 1):
            results = await asyncio.gather(
                *(twins.report(d, {"round": r, "mine": d}) for d in ids), return_exceptions=True
            )
            errors = [x for x in results if isinstance(x, BaseException)]
            assert not errors, f"round {r}: {len(errors)} errors, first {errors[0]!r}"
            assert results == [r + 1] * WRITERS  # reported $version: one per acknowledged write
        for record in await store.get_many(ids):
            assert record.reported == {"round": ROUNDS, "mine": record.device_id}
            assert record.reported_version == ROUNDS + 1
        if backend == "postgresql":
            batches = store.twin_writes  # type: ignore[attr-defined]
            assert batches.items >= WRITERS * ROUNDS
            assert batches.batches < batches.items / 4, (batches.batches, batches.items)  # writers shared commits
    finally:
        await store.close()


_POISON = """
CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.reported ? 'poison' THEN RAISE EXCEPTION 'poisoned twin %', NEW.device_id; END IF;
  RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER refuse_poison AFTER UPDATE ON devices
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_poison();
"""


async def test_a_failed_commit_acknowledges_nobody_and_fails_only_its_item(pg_cluster: Any) -> None:
    """A deferred constraint refuses some twins at COMMIT time: the batch's commit fails,
    nobody in it was acknowledged before; the others are rewritten one by one and
    succeed, the refused writers get the error and their patch is not stored."""
    url = pg_cluster.create_database("group_commit_poison")
    store = await open_store(url)
    admin = await asyncpg.connect(url)
    try:
        ids = await _register(store, 300, "poison")
        await admin.execute(_POISON)
        twins = TwinService(store, SessionRegistry())
        poisoned = set(ids[::37])
        results = await asyncio.gather(
            *(twins.report(d, {"poison": 1} if d in poisoned else {"ok": d}) for d in ids), return_exceptions=True
        )
        assert store.twin_writes.batches < len(ids)  # type: ignore[attr-defined]  # they did share batches
        for device_id, result in zip(ids, results, strict=True):
            if device_id in poisoned:
                assert isinstance(result, asyncpg.RaiseError), (device_id, result)
            else:
                assert result == 2, (device_id, result)
        stored = {r.device_id: r for r in await store.get_many(ids)}
        for device_id in ids:
            expected = {} if device_id in poisoned else {"ok": device_id}
            assert stored[device_id].reported == expected, device_id
            assert stored[device_id].reported_version == (1 if device_id in poisoned else 2)
    finally:
        await admin.close()
        await store.close()


async def test_connections_killed_mid_batch_lose_no_acknowledged_write(pg_cluster: Any) -> None:
    """PostgreSQL terminates the hub's connections while 1,000 writers run: a writer gets
    either its new ``$version`` (and the write is stored) or 503 (retryable)."""
    url = pg_cluster.create_database("group_commit_kill")
    store = await open_store(url)
    admin = await asyncpg.connect(url)
    try:
        ids = await _register(store, WRITERS, "kill")
        twins = TwinService(store, SessionRegistry())

        async def kill_one_busy_connection() -> int:
            while True:  # one server process in the middle of a statement or transaction
                pid = await admin.fetchval(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'iot-flows-hub'"
                    " AND datname = current_database() AND pid <> pg_backend_pid() AND state <> 'idle' LIMIT 1"
                )
                if pid:
                    return 1
                await asyncio.sleep(0.001)

        acknowledged: dict[str, int] = {}
        unavailable = killed = 0
        for r in range(1, ROUNDS + 1):
            killer = asyncio.create_task(kill_one_busy_connection())
            results = await asyncio.gather(*(twins.report(d, {f"w{r}": r}) for d in ids), return_exceptions=True)
            if killer.done():
                killed += killer.result()
            else:
                killer.cancel()
            for device_id, result in zip(ids, results, strict=True):
                if isinstance(result, ServiceUnavailableError):
                    unavailable += 1
                elif isinstance(result, BaseException):
                    raise result
                else:
                    acknowledged[f"{device_id}/{r}"] = result
        assert killed > 0
        assert unavailable > 0, "no batch was interrupted: the test proved nothing"
        assert acknowledged, "nothing was acknowledged"
        stored = {r.device_id: r for r in await store.get_many(ids)}
        lost = [k for k in acknowledged if stored[k.split("/")[0]].reported.get(f"w{k.split('/')[1]}") is None]
        assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {lost[:5]}"
        for key, version in acknowledged.items():
            assert stored[key.split("/")[0]].reported_version >= version
    finally:
        await admin.close()
        await store.close()

