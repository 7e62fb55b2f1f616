"""The hub's store: one interface (:class:`HubStore`), SQLite and PostgreSQL behind it.

:func:`open_store` picks the backend from a path or URL; services depend only on
:class:`HubStore` and the record types exported here.
"""

from __future__ import annotations

import sqlite3
from urllib.parse import urlsplit

from iot_flows.store._base import DeviceOutcome, HubStore, JsonText
from iot_flows.store._batch import GroupCommit
from iot_flows.store._cluster import ClusterStore, LeaseRenewer, open_cluster_store
from iot_flows.store._errors import STORAGE_ERRORS, StorageUnavailableError, storage_unavailable
from iot_flows.store._records import NEVER, DeviceRecord, new_etag

__all__ = [
    "NEVER", "STORAGE_ERRORS", "ClusterStore", "DeviceOutcome", "DeviceRecord", "GroupCommit", "HubStore", "LeaseRenewer",
    "JsonText", "StorageUnavailableError",
    "StoreConfigError", "new_etag", "open_cluster_store", "open_store", "storage_unavailable",
]  # fmt: skip


class StoreConfigError(ValueError):
    """The ``--db`` value names no usable store (bad URL, unsupported scheme)."""


def _sqlite_path(url_or_path: str) -> str | None:
    if url_or_path.startswith("sqlite:///"):  # sqlite:///relative.db, sqlite:////absolute.db
        return url_or_path[len("sqlite:///") :]
    if "://" not in url_or_path:
        return url_or_path
    return None


async def open_store(url_or_path: str, *, pool_size: int = 20, acquire_timeout: float = 10.0) -> HubStore:
    """Open (creating or migrating as needed) the store named by ``url_or_path``.

    * a file path or ``sqlite:///relative.db`` / ``sqlite:////abs/path.db``: SQLite;
    * ``postgresql://user[:password]@host[:port]/dbname`` (or ``postgres://``):
      PostgreSQL via asyncpg, with at most ``pool_size`` connections; a call waits up
      to ``acquire_timeout`` seconds for one (then 503). SQLite ignores both.

    Raises :class:`StoreConfigError` for a malformed or unsupported URL and
    :class:`~iot_flows._exceptions.ServiceUnavailableError` when PostgreSQL cannot be
    reached; both messages are one line naming what and where.
    """
    path = _sqlite_path(url_or_path)
    if path is not None:
        from pathlib import Path

        from iot_flows.store._sqlite import SqliteStore

        if not path:
            raise StoreConfigError(f"--db {url_or_path!r}: no SQLite file path given")
        folder = Path(path).parent
        if not folder.exists():  # a typo would start an empty registry somewhere new
            raise StoreConfigError(
                f"--db {url_or_path!r}: the folder {str(folder)!r} does not exist (create it first: mkdir -p {folder})"
            )
        if not folder.is_dir():
            raise StoreConfigError(f"--db {url_or_path!r}: {str(folder)!r} is a file, not a folder")
        try:
            return SqliteStore(path)
        except (OSError, sqlite3.Error) as exc:  # a file where a folder should be, no permission, not a database
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise StoreConfigError(f"--db {url_or_path!r}: cannot open the SQLite database there: {reason}") from None
    scheme = urlsplit(url_or_path).scheme.lower()
    if scheme in ("postgresql", "postgres"):
        from iot_flows.store._postgres import PostgresStore

        return await PostgresStore.open(url_or_path, pool_size=pool_size, acquire_timeout=acquire_timeout)
    raise StoreConfigError(
        f"--db {url_or_path!r}: unsupported scheme {scheme!r} (use a SQLite file path or postgresql://user@host:port/dbname)"
    )
