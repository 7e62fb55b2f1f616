"""Correlate requests with their responses: a ``$rid`` -> future ledger.

Twin requests (``$iothub/twin/GET``, ``.../PATCH/properties/reported``) carry a request
id in ``$rid``; the hub answers on ``$iothub/twin/res/{status}/?$rid=...``. The ledger
keeps one future per outstanding id, refuses duplicate ids, removes each entry in a
``finally`` (so a timed-out or cancelled request leaves nothing behind) and fails every
pending future at once when the connection drops (aiomqtt's pending calls, Azure v3's
``RequestLedger``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["RequestLedger"]


class RequestLedger:
    """Pending requests by id; single event loop, not thread-safe."""

    __slots__ = ("_pending", "_next")

    def __init__(self) -> None:
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._next = 0

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, rid: object) -> bool:
        return rid in self._pending

    def new_id(self) -> str:
        """A request id unique for this ledger's lifetime.

        A counter, not a UUID: ids only need to be unique per device connection,
        and the counter keeps growing across reconnects, so a late answer to a request
        from an earlier connection can never match a new one.
        """
        self._next += 1
        return format(self._next, "x")

    @contextmanager
    def pending(self, rid: str | None = None) -> Iterator[tuple[str, asyncio.Future[Any]]]:
        """Register ``rid`` (or a fresh id) for the duration of the block.

        Raises ``ValueError`` if the id is already pending.
        """
        rid = rid if rid is not None else self.new_id()
        if rid in self._pending:
            raise ValueError(f"request id {rid!r} is already pending")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        try:
            yield rid, future
        finally:
            if self._pending.get(rid) is future:
                del self._pending[rid]

    def resolve(self, rid: str, value: Any) -> bool:
        """Complete the request ``rid`` with ``value``; False if it is not pending."""
        future = self._pending.pop(rid, None)
        if future is None or future.done():
            return False
        future.set_result(value)
        return True

    def fail(self, rid: str, exc: BaseException) -> bool:
        """Fail the request ``rid``; False if it is not pending."""
        future = self._pending.pop(rid, None)
        if future is None or future.done():
            return False
        future.set_exception(exc)
        return True

    def fail_all(self, make_exc: Callable[[], BaseException]) -> int:
        """Fail every pending request with a fresh exception each; return how many."""
        pending, self._pending = self._pending, {}
        failed = 0
        for future in pending.values():
            if not future.done():
                future.set_exception(make_exc())
                failed += 1
        return failed
