"""Degraded storage -> IoT Hub's retryable 503 (issue 12 item 6).

A database that is locked by another process, a full disk, or a PostgreSQL server that
refuses or cancels work is not the caller's fault and passes: the hub answers
``503 ServiceUnavailable`` (``503001``, retryable; Azure's SDKs retry it) over REST and
status 503 on ``$iothub/twin/res/`` over MQTT, and serves again by itself once the lock
is released or space is freed. :func:`storage_unavailable` recognizes such errors.
"""

from __future__ import annotations

import sqlite3

import asyncpg

from iot_flows._exceptions import ServiceUnavailableError

__all__ = ["STORAGE_ERRORS", "StorageUnavailableError", "storage_unavailable"]

#: Base classes of the errors a store's driver raises (for exception handlers).
STORAGE_ERRORS: tuple[type[Exception], ...] = (
    sqlite3.DatabaseError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError,
)

#: SQLite result codes (primary) that pass: busy/locked by another connection, disk full,
#: I/O error, cannot open, lock protocol error.
_SQLITE_TRANSIENT = {
    sqlite3.SQLITE_BUSY: "the database is locked by another process",
    sqlite3.SQLITE_LOCKED: "the database is locked",
    sqlite3.SQLITE_FULL: "the disk (or the database's size limit) is full",
    sqlite3.SQLITE_IOERR: "a disk I/O error occurred",
    sqlite3.SQLITE_CANTOPEN: "the database file cannot be opened",
    sqlite3.SQLITE_PROTOCOL: "the database's lock protocol failed",
}

#: PostgreSQL errors that pass: no space or connections (class 53), a lock held elsewhere
#: (55P03), a statement or lock timeout (57014), operator intervention (57P0x), deadlock
#: or serialization failure (40xxx: retry the transaction); and a database that does not
#: accept connections now (55000 at connect, ``ALLOW_CONNECTIONS false``).
_PG_TRANSIENT = (
    asyncpg.InsufficientResourcesError,
    asyncpg.LockNotAvailableError,
    asyncpg.QueryCanceledError,
    asyncpg.OperatorInterventionError,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    # A pooled connection whose backend was terminated can be handed out in a state where
    # the next statement fails with "cannot switch to state ..."; the pool replaces it.
    asyncpg.InternalClientError,
    asyncpg.InterfaceError,
)


class StorageUnavailableError(ServiceUnavailableError):
    """The hub's database cannot take the operation now (503001, retryable after ~1 s)."""

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def storage_unavailable(exc: BaseException) -> ServiceUnavailableError | None:
    """The 503 error to answer for ``exc`` when it means degraded storage, else ``None``.

    ``exc``: any exception a :class:`~iot_flows.store.HubStore` call raised. Recognized:
    a :class:`ServiceUnavailableError` (returned as is), SQLite's busy / locked / full /
    I/O / cannot-open errors, and PostgreSQL's resource, lock, timeout, shutdown and
    serialization errors. Never raises.
    """
    if isinstance(exc, ServiceUnavailableError):
        return exc
    if isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError):
        code = getattr(exc, "sqlite_errorcode", None)
        why = _SQLITE_TRANSIENT.get(code & 0xFF) if isinstance(code, int) else None
        if why is None and "locked" in str(exc):
            why = _SQLITE_TRANSIENT[sqlite3.SQLITE_BUSY]
        if why is not None:
            return StorageUnavailableError(f"Storage is unavailable: {why} ({exc}); retry later.")
        return None
    if isinstance(exc, _PG_TRANSIENT) or (
        isinstance(exc, asyncpg.ObjectNotInPrerequisiteStateError) and "not currently accepting connections" in str(exc)
    ):
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return StorageUnavailableError(f"Storage is unavailable: PostgreSQL {detail}; retry later.")
    return None
