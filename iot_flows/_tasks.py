"""Background tasks owned by one object: spawned by name, reaped when done, closed together.

``asyncio`` keeps only a weak reference to a task, so fire-and-forget work needs an owner
that holds it until it ends, reports its failure once, and cancels and awaits it when the
owner stops (a task still pending when its loop closes is logged by ``asyncio`` as
"Task was destroyed but it is pending!").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["BackgroundTasks"]

T = TypeVar("T")
log = logging.getLogger(__name__)


class BackgroundTasks:
    """A set of running ``asyncio`` tasks with one owner (single event loop).

    Finished tasks leave the set by themselves; a task that raised is logged once (at
    ERROR, with its traceback, naming ``owner`` and the task). :meth:`close` cancels
    whatever still runs and awaits it, so nothing outlives the owner.
    """

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]:
        """Run ``coro`` as a task on the running loop, held until it ends; return the task."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()  # retrieved here, so asyncio does not report it again
        if exc is not None:
            log.error("%s: background task %s failed", self.owner, task.get_name(), exc_info=exc)

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def tasks(self) -> frozenset[asyncio.Task[Any]]:
        """The tasks still running (a snapshot)."""
        return frozenset(self._tasks)

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` s (None: forever) for the running tasks; True if all ended."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            return not pending
        return True

    async def close(self, grace: float = 0.0) -> None:
        """Let the tasks run up to ``grace`` s, then cancel the rest and await every one.

        New tasks may be spawned afterwards (the set is reusable). Exceptions of the tasks
        are logged, never raised here.
        """
        if grace > 0:
            await self.wait(grace)
        while self._tasks:  # a task being cancelled may spawn another
            tasks = set(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            self._tasks -= tasks
