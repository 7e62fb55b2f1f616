"""SQLite implementation of :class:`~iot_flows.store.HubStore` (the embedded default).

Writes run synchronously on the hub's event loop inside the async methods: each is one
short transaction in WAL mode, committed before the method returns and so before the
hub acknowledges the operation; an acknowledged write survives ``kill -9``
(``synchronous=NORMAL`` loses nothing on a process crash; only an OS crash could lose
the last transactions). Twin compare-and-set writes (a device's reported PATCH, a
service twin update) go through a :class:`~iot_flows.store._batch.GroupCommit`: the
writes of one event-loop tick share one transaction, and each caller returns only
after its COMMIT. Long reads (queries over many twins) use a read-only
connection per worker thread: WAL readers see a consistent snapshot that includes
every committed write, and never block the writer. The job tables are in :mod:`._sqlite_jobs`.
"""

from __future__ import annotations

import asyncio
import builtins
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from iot_flows._exceptions import DeviceAlreadyExistsError
from iot_flows.store._batch import GroupCommit
from iot_flows.store._errors import storage_unavailable
from iot_flows.store._records import DeviceRecord
from iot_flows.store._rows import (
    COLUMNS,
    IDENTITY_COLUMNS,
    JSON_COLUMNS,
    TWIN_COLUMNS,
    dumps,
    loads_column,
)
from iot_flows.store._schema import SQLITE_MIGRATIONS
from iot_flows.store._sqlite_jobs import SqliteJobs
from iot_flows.store._sqlite_query import SqliteQueries

__all__ = ["SqliteStore"]

_JSON_AT = tuple(i for i, c in enumerate(COLUMNS) if c in JSON_COLUMNS)
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM devices"
_SELECT_WITH_SESSION = f"SELECT {', '.join(COLUMNS)}, mqtt_subscriptions FROM devices"
#: ``device_id IN`` a JSON array bound as one parameter: one statement text for any number
#: of ids. ``IN (?, ?, ...)`` made a statement per batch size, and sqlite3 keeps up to 128
#: prepared statements per connection (a 500-id one is large): a connect burst left
#: megabytes of them in the hub (./scripts/bench, memory per device).
_IN_IDS = "device_id IN (SELECT value FROM json_each(?))"


def _cas_sql(columns: tuple[str, ...]) -> str:
    return f"UPDATE devices SET {', '.join(f'{c} = ?' for c in columns)} WHERE device_id = ? AND twin_version = ?"


#: Columns a compare-and-set writes when only these sections changed (always the versions and etag).
_SECTION_COLUMNS: dict[tuple[str, ...] | None, tuple[str, ...]] = {None: TWIN_COLUMNS}
for _sections in (("reported",), ("desired",), ("tags",), ("tags", "desired")):
    _SECTION_COLUMNS[_sections] = (
        *(c for name in _sections for c in (name, f"{name}_meta")),
        *(c for c in TWIN_COLUMNS if c.endswith("version") or c == "twin_etag"),
    )
_T = TypeVar("_T")
_R = TypeVar("_R")
#: One queued compare-and-set: (record, expected twin version, (columns, UPDATE statement)).
_TwinWrite = tuple[DeviceRecord, int, tuple[tuple[str, ...], str]]
_CAS_TWIN = {sections: (columns, _cas_sql(columns)) for sections, columns in _SECTION_COLUMNS.items()}


def _to_row(record: DeviceRecord, columns: Iterable[str]) -> builtins.list[Any]:
    out = []
    for column in columns:
        value = getattr(record, column)
        out.append(dumps(value) if column in JSON_COLUMNS else value)
    return out


def _from_row(row: tuple[Any, ...]) -> DeviceRecord:
    values = list(row)  # COLUMNS order: DeviceRecord's own
    for i in _JSON_AT:
        values[i] = loads_column(values[i])
    return DeviceRecord(*values)


#: How long a write waits for a lock another process holds before it fails (SQLITE_BUSY ->
#: 503, retryable): the writer runs on the event loop, so this is also how long the hub
#: stalls per write while another process locks the file. Readers run in threads.
WRITER_BUSY_TIMEOUT = 5.0
READER_BUSY_TIMEOUT = 30.0


def _connect(path: str, *, readonly: bool = False) -> sqlite3.Connection:
    busy = READER_BUSY_TIMEOUT if readonly else WRITER_BUSY_TIMEOUT
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={int(busy * 1000)}")
    if readonly:
        conn.execute("PRAGMA query_only=ON")
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Apply the schema steps newer than the database's ``schema_version``; return the version."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    current = int(row[0] or 0)
    for version, script in enumerate(SQLITE_MIGRATIONS, start=1):
        if version <= current:
            continue
        try:
            conn.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nINSERT INTO schema_version (version) VALUES ({version:d});\nCOMMIT;"
            )
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        current = version
    return current


class SqliteStore(SqliteQueries, SqliteJobs):
    """Registry, twins, meta values, sessions and job tables in one SQLite file."""

    dialect = "sqlite"

    def __init__(self, path: str | Path) -> None:
        self.path = self.location = str(path)
        self._conn = _connect(self.path)
        self.schema_version = migrate(self._conn)
        self._local = threading.local()
        self._readers: builtins.list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._depth = 0
        #: Group commit of twin compare-and-set writes (one writer connection: one batch at a time).
        self.twin_writes: GroupCommit[_TwinWrite, bool] = GroupCommit(
            self._write_twins, max_batch=1000, max_inflight=1
        )
        #: Group reads of single twins (a connect or PATCH storm): one SELECT per tick.
        self.twin_reads: GroupCommit[str, DeviceRecord | None] = GroupCommit(
            self._read_twins, max_batch=500, max_inflight=1
        )
        self.session_reads: GroupCommit[str, builtins.list[str]] = GroupCommit(
            self._read_sessions, max_batch=500, max_inflight=1
        )
        #: Group reads of what a CONNECT needs (record and stored session): one SELECT per tick.
        self.connect_reads: GroupCommit[str, tuple[DeviceRecord | None, builtins.list[str]]] = GroupCommit(
            self._read_connects, max_batch=500, max_inflight=1
        )
        #: Group commit of per-connection bookkeeping (connection state, stored session).
        self.small_writes: GroupCommit[tuple[str, tuple[Any, ...]], None] = GroupCommit(
            self._write_small, max_batch=1000, max_inflight=1
        )

    # ---- plumbing ---------------------------------------------------------------
    def _reader(self) -> sqlite3.Connection:
        """A read-only connection for the calling thread (for long queries off the loop)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path, readonly=True)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` on the writer; rolls back on error.

        The methods called inside never suspend, so no other task's write can slip
        into the transaction; nested blocks join the outer one.
        """
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._conn.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            self._conn.execute("ROLLBACK")
            raise
        self._depth = 0
        self._conn.execute("COMMIT")

    async def close(self) -> None:
        """Close every connection (checkpointing the WAL)."""
        self.close_sync()

    def close_sync(self) -> None:
        """:meth:`close` for callers without an event loop."""
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        self._conn.close()

    # ---- meta -------------------------------------------------------------------
    async def get_meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    async def set_meta(self, key: str, value: str) -> None:
        self._conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    async def set_meta_if_absent(self, key: str, value: str) -> str:
        self._conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO NOTHING", (key, value))
        stored = await self.get_meta(key)
        assert stored is not None
        return stored

    # ---- devices ----------------------------------------------------------------
    async def get(self, device_id: str) -> DeviceRecord | None:
        if not self._depth:
            return await self.twin_reads.submit(device_id, device_id)
        row = self._conn.execute(f"{_SELECT} WHERE device_id = ?", (device_id,)).fetchone()
        return _from_row(row) if row else None

    async def _small_write(self, kind: str, device_id: str, sql: str, params: tuple[Any, ...]) -> None:
        """Run ``sql`` now inside a transaction(), else in the tick's shared transaction."""
        if self._depth:
            self._conn.execute(sql, params)
        else:
            await self.small_writes.submit((kind, device_id), (sql, params))

    async def get_many(self, device_ids: builtins.list[str]) -> builtins.list[DeviceRecord]:
        out: builtins.list[DeviceRecord] = []
        for start in range(0, len(device_ids), 500):
            chunk = device_ids[start : start + 500]
            rows = self._conn.execute(f"{_SELECT} WHERE {_IN_IDS} ORDER BY device_id", (dumps(chunk),)).fetchall()
            out.extend(_from_row(r) for r in rows)
        return out

    async def insert(self, record: DeviceRecord) -> None:
        marks = ",".join("?" * len(COLUMNS))
        try:
            self._conn.execute(
                f"INSERT INTO devices ({', '.join(COLUMNS)}) VALUES ({marks})", _to_row(record, COLUMNS)
            )
        except sqlite3.IntegrityError as exc:
            raise DeviceAlreadyExistsError(
                f"A device with ID '{record.device_id}' is already registered."
            ) from exc

    async def update_identity(self, record: DeviceRecord) -> None:
        sets = ", ".join(f"{c} = ?" for c in IDENTITY_COLUMNS)
        self._conn.execute(
            f"UPDATE devices SET {sets} WHERE device_id = ?",
            [*_to_row(record, IDENTITY_COLUMNS), record.device_id],
        )

    async def update_twin(
        self, record: DeviceRecord, *, expected_version: int | None = None, sections: tuple[str, ...] | None = None
    ) -> bool:
        if expected_version is None:
            sets = ", ".join(f"{c} = ?" for c in TWIN_COLUMNS)
            cur = self._conn.execute(
                f"UPDATE devices SET {sets} WHERE device_id = ?", [*_to_row(record, TWIN_COLUMNS), record.device_id]
            )
            return cur.rowcount > 0
        columns_sql = _CAS_TWIN.get(sections) or _CAS_TWIN[None]
        if self._depth:  # inside transaction(): part of the caller's commit
            return self._cas_twin(record, expected_version, columns_sql)
        return await self.twin_writes.submit(record.device_id, (record, expected_version, columns_sql))

    def _cas_twin(self, record: DeviceRecord, expected_version: int, columns_sql: tuple[tuple[str, ...], str]) -> bool:
        columns, sql = columns_sql
        return self._conn.execute(sql, [*_to_row(record, columns), record.device_id, expected_version]).rowcount > 0

    async def _write_twins(self, items: builtins.list[_TwinWrite]) -> builtins.list[bool | BaseException]:
        """One transaction of compare-and-set twin writes; True per item that was written.

        Returns only after COMMIT. Degraded storage (locked file, full disk) fails the whole
        batch (503 to every writer, nothing acknowledged); any other error re-runs each
        item in its own transaction, so only the item at fault fails.
        """
        return await self._batch(items, lambda item: self._cas_twin(*item))

    async def _batch(self, items: builtins.list[_T], write: Callable[[_T], _R]) -> builtins.list[_R | BaseException]:
        """``write`` each item in one ``BEGIN IMMEDIATE`` ... ``COMMIT``; see :meth:`_write_twins`."""
        while self._depth:  # another task's transaction() is open (its body should never suspend)
            await asyncio.sleep(0.001)
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            results: builtins.list[_R | BaseException] = [write(item) for item in items]
            self._conn.execute("COMMIT")
        except Exception as exc:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            if len(items) == 1 or storage_unavailable(exc) is not None:
                raise
            results = []
            for item in items:  # each alone, in its own (autocommit) transaction
                try:
                    results.append(write(item))
                except Exception as item_exc:
                    results.append(item_exc)
        return results

    async def _read_twins(self, device_ids: builtins.list[str]) -> builtins.list[DeviceRecord | None | BaseException]:
        """Records of one tick's :meth:`get` calls, read by one statement."""
        rows = self._conn.execute(f"{_SELECT} WHERE {_IN_IDS}", (dumps(device_ids),)).fetchall()
        found = {r[0]: r for r in rows}
        return [_from_row(found[d]) if d in found else None for d in device_ids]

    async def _write_small(self, items: builtins.list[tuple[str, tuple[Any, ...]]]) -> builtins.list[None | BaseException]:
        """One tick's connection-state / session / model-id updates in one transaction."""
        def write(item: tuple[str, tuple[Any, ...]]) -> None:
            self._conn.execute(*item)

        return await self._batch(items, write)

    async def delete(self, device_id: str) -> bool:
        cur = self._conn.execute("DELETE FROM devices WHERE device_id = ?", (device_id,))
        return cur.rowcount > 0

    async def list(self, *, after: str = "", limit: int = 1000) -> builtins.list[DeviceRecord]:
        rows = self._conn.execute(
            f"{_SELECT} WHERE device_id > ? ORDER BY device_id LIMIT ?", (after, limit)
        ).fetchall()
        return [_from_row(r) for r in rows]

    async def count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM devices").fetchone()[0])

    async def set_connection_state(self, device_id: str, state: str, when: str) -> None:
        if state == "Connected":
            await self._small_write(
                "state",
                device_id,
                "UPDATE devices SET connection_state = ?, connection_state_updated_time = ?, "
                "last_activity_time = ? WHERE device_id = ?",
                (state, when, when, device_id),
            )
        else:
            await self._small_write(
                "state",
                device_id,
                "UPDATE devices SET connection_state = ?, connection_state_updated_time = ? WHERE device_id = ?",
                (state, when, device_id),
            )

    async def set_model_id(self, device_id: str, model_id: str) -> None:
        await self._small_write(
            "model", device_id, "UPDATE devices SET model_id = ? WHERE device_id = ?", (model_id, device_id)
        )

    async def reset_connection_states(self, when: str) -> None:
        self._conn.execute(
            "UPDATE devices SET connection_state = 'Disconnected', connection_state_updated_time = ? "
            "WHERE connection_state != 'Disconnected'",
            (when,),
        )

    # ---- sessions ---------------------------------------------------------------
    async def get_subscriptions(self, device_id: str) -> builtins.list[str]:
        if not self._depth:
            return await self.session_reads.submit(device_id, device_id)
        row = self._conn.execute("SELECT mqtt_subscriptions FROM devices WHERE device_id = ?", (device_id,)).fetchone()
        return [s for s in row[0].split("\n") if s] if row else []

    async def get_for_connect(self, device_id: str) -> tuple[DeviceRecord | None, builtins.list[str]]:
        if not self._depth:
            return await self.connect_reads.submit(device_id, device_id)
        return (await self._read_connects([device_id]))[0]  # type: ignore[return-value]

    async def _read_connects(
        self, device_ids: builtins.list[str]
    ) -> builtins.list[tuple[DeviceRecord | None, builtins.list[str]] | BaseException]:
        """Records and stored topic filters of one tick's CONNECTs, by one SELECT."""
        rows = self._conn.execute(f"{_SELECT_WITH_SESSION} WHERE {_IN_IDS}", (dumps(device_ids),)).fetchall()
        found = {r[0]: r for r in rows}
        out: builtins.list[tuple[DeviceRecord | None, builtins.list[str]] | BaseException] = []
        for d in device_ids:
            row = found.get(d)
            out.append((None, []) if row is None else (_from_row(row[:-1]), [f for f in row[-1].split("\n") if f]))
        return out

    async def _read_sessions(self, device_ids: builtins.list[str]) -> builtins.list[builtins.list[str] | BaseException]:
        """Stored topic filters of one tick's :meth:`get_subscriptions` calls, by one SELECT."""
        rows = self._conn.execute(
            f"SELECT device_id, mqtt_subscriptions FROM devices WHERE {_IN_IDS}", (dumps(device_ids),)
        ).fetchall()
        found = dict(rows)
        return [[f for f in found[d].split("\n") if f] if d in found else [] for d in device_ids]

    async def set_subscriptions(self, device_id: str, filters: builtins.list[str]) -> None:
        await self._small_write(
            "session",
            device_id,
            "UPDATE devices SET mqtt_subscriptions = ? WHERE device_id = ?",
            ("\n".join(sorted(filters)), device_id),
        )
