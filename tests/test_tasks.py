"""``BackgroundTasks``: holds tasks until they end, logs a failure once, closes everything."""

from __future__ import annotations

import asyncio
import logging

import pytest

from iot_flows._tasks import BackgroundTasks


async def test_finished_tasks_leave_and_failures_are_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    tasks = BackgroundTasks("owner-x")

    async def boom() -> None:
        raise ValueError("bad")

    with caplog.at_level(logging.ERROR, logger="iot_flows._tasks"):
        ok = tasks.spawn(asyncio.sleep(0, result=7), name="fine")
        bad = tasks.spawn(boom(), name="boom-task")
        assert await tasks.wait(5)
    assert len(tasks) == 0 and ok.result() == 7 and bad.done()
    failures = [r for r in caplog.records if "boom-task" in r.getMessage()]
    assert len(failures) == 1 and "owner-x" in failures[0].getMessage()
    assert failures[0].exc_info is not None and failures[0].exc_info[0] is ValueError


async def test_close_cancels_and_awaits_every_task() -> None:
    tasks = BackgroundTasks("owner-y")
    cleaned: list[str] = []

    async def forever(name: str) -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0)  # cleanup that itself awaits
            cleaned.append(name)

    spawned = [tasks.spawn(forever(f"t{i}"), name=f"t{i}") for i in range(3)]
    await asyncio.sleep(0)
    await tasks.close()
    assert all(t.cancelled() for t in spawned) and sorted(cleaned) == ["t0", "t1", "t2"] and len(tasks) == 0


async def test_close_with_grace_lets_short_tasks_finish() -> None:
    tasks = BackgroundTasks("owner-z")
    quick = tasks.spawn(asyncio.sleep(0.01, result="done"))
    slow = tasks.spawn(asyncio.sleep(3600))
    await tasks.close(grace=0.5)
    assert quick.result() == "done" and slow.cancelled()
