"""The $rid -> future ledger, without a broker."""

from __future__ import annotations

import asyncio

import pytest

from iot_flows._exceptions import ConnectionLostError
from iot_flows.device._ledger import RequestLedger


async def test_resolve_and_cleanup() -> None:
    ledger = RequestLedger()
    with ledger.pending() as (rid, future):
        assert rid in ledger and len(ledger) == 1
        assert ledger.resolve(rid, "answer")
        assert await future == "answer"
        assert not ledger.resolve(rid, "again")  # already answered
    assert len(ledger) == 0


async def test_ids_are_unique_and_duplicates_rejected() -> None:
    ledger = RequestLedger()
    ids = {ledger.new_id() for _ in range(1000)}
    assert len(ids) == 1000
    with ledger.pending("x"):
        with pytest.raises(ValueError, match="already pending"):
            with ledger.pending("x"):
                pass
        assert "x" in ledger
    assert "x" not in ledger


async def test_timeout_leaves_nothing_behind() -> None:
    ledger = RequestLedger()
    with pytest.raises(TimeoutError):
        with ledger.pending() as (rid, future):
            await asyncio.wait_for(future, 0.01)
    assert len(ledger) == 0
    assert not ledger.resolve(rid, "late")


async def test_fail_all_fails_every_pending_request() -> None:
    ledger = RequestLedger()

    async def request() -> object:
        with ledger.pending() as (_, future):
            return await future

    tasks = [asyncio.create_task(request()) for _ in range(5)]
    await asyncio.sleep(0)
    assert ledger.fail_all(lambda: ConnectionLostError("gone")) == 5
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, ConnectionLostError) for r in results)
    assert len(ledger) == 0
    assert ledger.fail_all(lambda: ConnectionLostError("again")) == 0
