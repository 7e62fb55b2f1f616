"""Group commit: many concurrent small store calls share one round trip and one commit.

A :class:`GroupCommit` collects the calls submitted during one event-loop tick (and
while earlier batches are still running) and hands them to one ``run`` function as a
batch; each caller waits for its own result and is answered only after ``run``
returned, i.e. after the batch's transaction committed. If ``run`` raises, every
caller of that batch gets the exception (nothing acknowledged, the writer retries);
``run`` itself returns a per-item result or exception, so one bad item can fail alone.

Items with the same key never share a batch (a later one waits for the next batch), so
``run`` may assume one item per key (one twin per ``UPDATE ... FROM unnest``). At most
``max_inflight`` batches run at once, which bounds the pool connections they take.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["GroupCommit"]

T = TypeVar("T")
R = TypeVar("R")
#: Runs one batch: per item its result or the exception that item alone raised.
BatchRunner = Callable[[list[T]], Awaitable[list["R | BaseException"]]]


class GroupCommit(Generic[T, R]):
    """Batches concurrent :meth:`submit` calls into calls of ``run`` (see module doc)."""

    def __init__(self, run: BatchRunner[T, R], *, max_batch: int = 500, max_inflight: int = 4) -> None:
        self._run = run
        self._max_batch = max(1, max_batch)
        self._max_inflight = max(1, max_inflight)
        self._pending: list[tuple[Hashable, T, asyncio.Future[R]]] = []
        self._inflight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        #: batches run and items carried, for benchmarks
        self.batches = 0
        self.items = 0

    async def submit(self, key: Hashable, item: T) -> R:
        """Queue ``item`` for the next batch; return its result once the batch committed.

        Raises whatever ``run`` raised for the batch or for this item.
        """
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((key, item, future))
        self._schedule()
        return await future

    def _schedule(self) -> None:
        if self._scheduled or not self._pending or self._inflight >= self._max_inflight:
            return
        self._scheduled = True
        asyncio.get_running_loop().call_soon(self._start)

    def _take(self) -> list[tuple[Hashable, T, asyncio.Future[R]]]:
        batch: list[tuple[Hashable, T, asyncio.Future[R]]] = []
        keys: set[Hashable] = set()
        rest: list[tuple[Hashable, T, asyncio.Future[R]]] = []
        for entry in self._pending:
            if entry[2].done():  # the caller was cancelled before its batch started
                continue
            if len(batch) < self._max_batch and entry[0] not in keys:
                keys.add(entry[0])
                batch.append(entry)
            else:
                rest.append(entry)
        self._pending = rest
        return batch

    def _start(self) -> None:
        self._scheduled = False
        while self._pending and self._inflight < self._max_inflight:
            batch = self._take()
            if not batch:
                return
            self._inflight += 1
            task = asyncio.get_running_loop().create_task(self._flush(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _flush(self, batch: list[tuple[Hashable, T, asyncio.Future[R]]]) -> None:
        try:
            try:
                results = await self._run([item for _, item, _ in batch])
            except BaseException as exc:  # the whole batch failed: nobody is acknowledged
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                return
            self.batches += 1
            self.items += len(batch)
            for (_, _, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        finally:
            self._inflight -= 1
            self._schedule()
