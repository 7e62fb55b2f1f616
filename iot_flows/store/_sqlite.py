"""SQLite implementation of the hub store.

Writes run synchronously on the hub's event loop: each is one short transaction in
WAL mode, committed before the hub acknowledges the operation, so an acknowledged
write survives ``kill -9`` (``synchronous=NORMAL`` loses nothing on a process crash;
only an OS crash could lose the last transactions). Long reads (queries over many
twins) use a separate read connection from a worker thread: WAL readers see a
consistent snapshot and never block the writer.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from iot_flows._exceptions import DeviceAlreadyExistsError
from iot_flows.store._records import DeviceRecord
from iot_flows.store._schema import ADDED_DEVICE_COLUMNS, DDL, JOBS_DDL, SCHEMA_VERSION

__all__ = ["SqliteStore"]

_JSON_COLUMNS = ("capabilities", "tags", "desired", "reported", "tags_meta", "desired_meta", "reported_meta")
_COLUMNS = (
    "device_id", "generation_id", "device_etag", "status", "status_reason", "status_updated_time",
    "auth_type", "primary_key", "secondary_key", "primary_thumbprint", "secondary_thumbprint",
    "capabilities", "connection_state", "connection_state_updated_time", "last_activity_time",
    "c2d_message_count", "tags", "desired", "reported", "tags_meta", "desired_meta", "reported_meta",
    "desired_version", "reported_version", "twin_version", "twin_etag", "model_id",
)  # fmt: skip
_IDENTITY_COLUMNS = (
    "generation_id", "device_etag", "status", "status_reason", "status_updated_time", "auth_type",
    "primary_key", "secondary_key", "primary_thumbprint", "secondary_thumbprint", "capabilities",
)  # fmt: skip
_TWIN_COLUMNS = (
    "tags", "desired", "reported", "tags_meta", "desired_meta", "reported_meta",
    "desired_version", "reported_version", "twin_version", "twin_etag",
)  # fmt: skip
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM devices"
_JSON_DUMPS = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _to_row(record: DeviceRecord, columns: Iterable[str]) -> list[Any]:
    out = []
    for column in columns:
        value = getattr(record, column)
        out.append(_JSON_DUMPS(value) if column in _JSON_COLUMNS else value)
    return out


def _from_row(row: tuple[Any, ...]) -> DeviceRecord:
    values = dict(zip(_COLUMNS, row, strict=True))
    for column in _JSON_COLUMNS:
        values[column] = json.loads(values[column])
    return DeviceRecord(**values)


def _connect(path: str, *, readonly: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    if readonly:
        conn.execute("PRAGMA query_only=ON")
    return conn


class SqliteStore:
    """Registry, twins, meta values and job tables in one SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._conn = _connect(self.path)
        self._conn.executescript(DDL + JOBS_DDL)
        present = {row[1] for row in self._conn.execute("PRAGMA table_info(devices)")}
        for column, definition in ADDED_DEVICE_COLUMNS:  # databases made by older releases
            if column not in present:
                self._conn.execute(f"ALTER TABLE devices ADD COLUMN {column} {definition}")
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        if self.get_meta("schema_version") is None:
            self.set_meta("schema_version", str(SCHEMA_VERSION))

    # ---- plumbing ---------------------------------------------------------------
    @property
    def connection(self) -> sqlite3.Connection:
        """The writer connection (event-loop thread only)."""
        return self._conn

    def reader(self) -> sqlite3.Connection:
        """A read-only connection for the calling thread (for long queries off the loop)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path, readonly=True)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` on the writer; rolls back on error."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def close(self) -> None:
        """Close every connection (checkpointing the WAL)."""
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        self._conn.close()

    # ---- meta -------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self._conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # ---- devices ----------------------------------------------------------------
    def get(self, device_id: str) -> DeviceRecord | None:
        row = self._conn.execute(f"{_SELECT} WHERE device_id = ?", (device_id,)).fetchone()
        return _from_row(row) if row else None

    def get_many(self, device_ids: list[str]) -> list[DeviceRecord]:
        """Records for the ids that exist, in id order."""
        out: list[DeviceRecord] = []
        for start in range(0, len(device_ids), 500):
            chunk = device_ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._conn.execute(
                f"{_SELECT} WHERE device_id IN ({marks}) ORDER BY device_id", chunk
            ).fetchall()
            out.extend(_from_row(r) for r in rows)
        return out

    def insert(self, record: DeviceRecord) -> None:
        """Insert a new device; raise :class:`DeviceAlreadyExistsError` if the id is taken."""
        marks = ",".join("?" * len(_COLUMNS))
        try:
            self._conn.execute(
                f"INSERT INTO devices ({', '.join(_COLUMNS)}) VALUES ({marks})", _to_row(record, _COLUMNS)
            )
        except sqlite3.IntegrityError as exc:
            raise DeviceAlreadyExistsError(
                f"A device with ID '{record.device_id}' is already registered."
            ) from exc

    def update_identity(self, record: DeviceRecord) -> None:
        sets = ", ".join(f"{c} = ?" for c in _IDENTITY_COLUMNS)
        self._conn.execute(
            f"UPDATE devices SET {sets} WHERE device_id = ?",
            [*_to_row(record, _IDENTITY_COLUMNS), record.device_id],
        )

    def update_twin(self, record: DeviceRecord) -> None:
        sets = ", ".join(f"{c} = ?" for c in _TWIN_COLUMNS)
        self._conn.execute(
            f"UPDATE devices SET {sets} WHERE device_id = ?",
            [*_to_row(record, _TWIN_COLUMNS), record.device_id],
        )

    def delete(self, device_id: str) -> bool:
        cur = self._conn.execute("DELETE FROM devices WHERE device_id = ?", (device_id,))
        return cur.rowcount > 0

    def list(self, *, after: str = "", limit: int = 1000) -> list[DeviceRecord]:
        rows = self._conn.execute(
            f"{_SELECT} WHERE device_id > ? ORDER BY device_id LIMIT ?", (after, limit)
        ).fetchall()
        return [_from_row(r) for r in rows]

    @staticmethod
    def select_records(
        conn: sqlite3.Connection, where_sql: str, params: tuple[Any, ...], *, after: str, limit: int
    ) -> list[DeviceRecord]:
        """Records matching a compiled WHERE body, keyset-paged by device id (any connection)."""
        rows = conn.execute(
            f"{_SELECT} WHERE ({where_sql}) AND device_id > ? ORDER BY device_id LIMIT ?", (*params, after, limit)
        ).fetchall()
        return [_from_row(r) for r in rows]

    def count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM devices").fetchone()[0])

    def set_connection_state(self, device_id: str, state: str, when: str) -> None:
        """Record a connect/disconnect; never touches the twin etag (clients hold it)."""
        if state == "Connected":
            self._conn.execute(
                "UPDATE devices SET connection_state = ?, connection_state_updated_time = ?, "
                "last_activity_time = ? WHERE device_id = ?",
                (state, when, when, device_id),
            )
        else:
            self._conn.execute(
                "UPDATE devices SET connection_state = ?, connection_state_updated_time = ? "
                "WHERE device_id = ?",
                (state, when, device_id),
            )

    def set_model_id(self, device_id: str, model_id: str) -> None:
        """Record the Plug and Play model id a device announced (twin ``modelId``); no etag change."""
        self._conn.execute("UPDATE devices SET model_id = ? WHERE device_id = ?", (model_id, device_id))

    def get_subscriptions(self, device_id: str) -> list[str]:
        row = self._conn.execute("SELECT mqtt_subscriptions FROM devices WHERE device_id = ?", (device_id,)).fetchone()
        return [s for s in row[0].split("\n") if s] if row else []

    def set_subscriptions(self, device_id: str, filters: list[str]) -> None:
        self._conn.execute(
            "UPDATE devices SET mqtt_subscriptions = ? WHERE device_id = ?", ("\n".join(sorted(filters)), device_id)
        )

    def reset_connection_states(self, when: str) -> None:
        """Mark every device disconnected (hub start: no connection survives a restart)."""
        self._conn.execute(
            "UPDATE devices SET connection_state = 'Disconnected', connection_state_updated_time = ? "
            "WHERE connection_state != 'Disconnected'",
            (when,),
        )
