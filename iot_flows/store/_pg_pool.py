"""PostgreSQL connection plumbing of :class:`~iot_flows.store._postgres.PostgresStore`.

Pooled connections (asyncpg), the transaction bound to the current task, and the
translation of a lost or unreachable server into
:class:`~iot_flows._exceptions.ServiceUnavailableError` (503, retryable).
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from contextvars import ContextVar
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from iot_flows._exceptions import ServiceUnavailableError
from iot_flows.store._base import HubStore

__all__ = ["PostgresConnections", "describe"]

#: Errors that mean "the server is gone or refuses connections now", never "bad SQL".
_LOST = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.InterfaceError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InternalClientError,  # a pooled connection whose server process was terminated mid-call
)


def _rowcount(status: str) -> int:
    try:
        return int(status.rsplit(" ", 1)[-1])
    except ValueError:
        return 0


def describe(url: str) -> str:
    """``host:port/dbname`` of a PostgreSQL URL (never the password)."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or '/'}"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text


class PostgresConnections(HubStore):
    """Pool, per-task transaction and lost-server translation shared by the PostgreSQL store's parts."""

    _pool: asyncpg.Pool
    _acquire_timeout: float
    #: (connection, owning task) of the transaction in progress in this context
    _tx: ContextVar[tuple[Any, Any] | None]

    # ---- plumbing -------------------------------------------------------------------
    def _lost(self, exc: BaseException) -> ServiceUnavailableError:
        return ServiceUnavailableError(f"PostgreSQL at {self.location} is unavailable: {_one_line(exc)}")

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[Any]:
        """The transaction's connection when inside one (same task), else a pooled one."""
        tx = self._tx.get()
        if tx is not None and tx[1] is asyncio.current_task():
            yield tx[0]
            return
        try:
            async with self._pool.acquire(timeout=self._acquire_timeout) as conn:
                try:
                    yield conn
                except (*_LOST, ServiceUnavailableError):
                    with suppress(Exception):  # may be half-broken (server process gone): never reuse it
                        conn.terminate()
                    raise
        except _LOST as exc:
            raise self._lost(exc) from None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        tx = self._tx.get()
        if tx is not None and tx[1] is asyncio.current_task():
            yield  # nested: joins the outer transaction
            return
        async with self._conn() as conn:
            try:
                async with conn.transaction():
                    token = self._tx.set((conn, asyncio.current_task()))
                    try:
                        yield
                    finally:
                        self._tx.reset(token)
            except _LOST as exc:
                raise self._lost(exc) from None

    async def _fetch(self, sql: str, *args: Any) -> builtins.list[Any]:
        async with self._conn() as conn:
            try:
                return list(await conn.fetch(sql, *args))
            except _LOST as exc:
                raise self._lost(exc) from None

    async def _fetchrow(self, sql: str, *args: Any) -> Any:
        async with self._conn() as conn:
            try:
                return await conn.fetchrow(sql, *args)
            except _LOST as exc:
                raise self._lost(exc) from None

    async def _execute(self, sql: str, *args: Any) -> str:
        async with self._conn() as conn:
            try:
                return str(await conn.execute(sql, *args))
            except _LOST as exc:
                raise self._lost(exc) from None

    async def _executemany(self, sql: str, args: builtins.list[Any]) -> None:
        if not args:
            return
        async with self._conn() as conn:
            try:
                await conn.executemany(sql, args)
            except _LOST as exc:
                raise self._lost(exc) from None

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._pool.close(), 5)
        except (TimeoutError, *_LOST):
            self._pool.terminate()

    # ---- transaction in progress ---------------------------------------------------
    def _in_transaction(self) -> bool:
        tx = self._tx.get()
        return tx is not None and tx[1] is asyncio.current_task()
