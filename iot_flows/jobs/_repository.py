"""Persistence of jobs and per-device job records in the hub's SQLite store.

Writes are batched: a fan-out over 10,000 devices commits its records in chunks, one
transaction each, instead of one transaction per device.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from typing import Any

from iot_flows._exceptions import JobAlreadyExistsError, JobNotFoundError
from iot_flows.jobs._states import DeviceJobStatus, JobStatus
from iot_flows.store._sqlite import SqliteStore

__all__ = ["DeviceOutcome", "JobRepository"]

#: (device_id, status, start_time_utc, end_time_utc, outcome JSON | None, error JSON | None)
DeviceOutcome = tuple[str, DeviceJobStatus, str | None, str | None, Any, Any]
_DUMPS = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class JobRepository:
    """Jobs and device records on the store's writer connection (event-loop thread)."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store
        self._db: sqlite3.Connection = store.connection

    def insert(self, job_id: str, job_type: str, status: JobStatus, created: str, doc: dict[str, Any]) -> None:
        try:
            self._db.execute(
                "INSERT INTO jobs (job_id, type, status, created_time, doc) VALUES (?, ?, ?, ?, ?)",
                (job_id, job_type, status.value, created, _DUMPS(doc)),
            )
        except sqlite3.IntegrityError:
            raise JobAlreadyExistsError(f"A job with id '{job_id}' already exists.") from None

    def save(self, doc: dict[str, Any]) -> None:
        self._db.execute(
            "UPDATE jobs SET status = ?, doc = ? WHERE job_id = ?", (doc["status"], _DUMPS(doc), doc["jobId"])
        )

    def get(self, job_id: str) -> dict[str, Any]:
        row = self._db.execute("SELECT doc FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFoundError(f"Job '{job_id}' not found.")
        return json.loads(row[0])  # type: ignore[no-any-return]

    def active(self) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT doc FROM jobs WHERE status IN ('queued', 'scheduled', 'running') ORDER BY created_time"
        ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def count_active(self) -> int:
        return int(
            self._db.execute("SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'scheduled', 'running')").fetchone()[0]
        )

    def list(self, *, job_type: str | None, status: str | None, after: str, limit: int) -> list[dict[str, Any]]:
        """Jobs ordered by (created_time, job_id); ``after`` is ``created_time|job_id`` of the last seen."""
        where, params = ["(created_time || '|' || job_id) > ?"], [after]
        if job_type:
            where.append("type = ?")
            params.append(job_type)
        if status:
            where.append("status = ?")
            params.append(status)
        rows = self._db.execute(
            f"SELECT doc FROM jobs WHERE {' AND '.join(where)} ORDER BY created_time, job_id LIMIT ?",
            [*params, limit],
        ).fetchall()
        return [json.loads(r[0]) for r in rows]

    # ---- device records -----------------------------------------------------------------
    def select_devices(self, where_sql: str, params: tuple[Any, ...]) -> list[str]:
        """Device ids matching a compiled WHERE condition, at this moment."""
        rows = self._db.execute(f"SELECT device_id FROM devices WHERE {where_sql} ORDER BY device_id", params).fetchall()
        return [r[0] for r in rows]

    def add_devices(self, job_id: str, job_type: str, device_ids: Iterable[str], status: DeviceJobStatus, now: str) -> None:
        self._db.executemany(
            "INSERT OR IGNORE INTO device_jobs (job_id, device_id, job_type, status, created_date_time_utc,"
            " last_updated_date_time_utc) VALUES (?, ?, ?, ?, ?, ?)",
            ((job_id, d, job_type, status.value, now, now) for d in device_ids),
        )

    def mark_running(self, job_id: str, device_ids: list[str], now: str) -> None:
        self._db.executemany(
            "UPDATE device_jobs SET status = 'running', start_time_utc = ?, last_updated_date_time_utc = ?"
            " WHERE job_id = ? AND device_id = ?",
            ((now, now, job_id, d) for d in device_ids),
        )

    def record(self, job_id: str, outcomes: list[DeviceOutcome], now: str) -> None:
        self._db.executemany(
            "UPDATE device_jobs SET status = ?, start_time_utc = COALESCE(start_time_utc, ?), end_time_utc = ?,"
            " outcome = ?, error = ?, last_updated_date_time_utc = ? WHERE job_id = ? AND device_id = ?",
            (
                (
                    status.value,
                    start,
                    end,
                    _DUMPS(outcome) if outcome is not None else None,
                    _DUMPS(error) if error is not None else None,
                    now,
                    job_id,
                    device_id,
                )
                for device_id, status, start, end, outcome, error in outcomes
            ),
        )

    def set_status_where(
        self, job_id: str, from_states: Iterable[DeviceJobStatus], to: DeviceJobStatus, now: str, error: Any = None
    ) -> int:
        states = [s.value for s in from_states]
        marks = ",".join("?" * len(states))
        cur = self._db.execute(
            f"UPDATE device_jobs SET status = ?, end_time_utc = ?, last_updated_date_time_utc = ?, error = ?"
            f" WHERE job_id = ? AND status IN ({marks})",
            [to.value, now, now, _DUMPS(error) if error is not None else None, job_id, *states],
        )
        return cur.rowcount

    def device_ids(self, job_id: str, status: DeviceJobStatus) -> list[str]:
        rows = self._db.execute(
            "SELECT device_id FROM device_jobs WHERE job_id = ? AND status = ? ORDER BY device_id", (job_id, status.value)
        ).fetchall()
        return [r[0] for r in rows]

    def counts(self, job_id: str) -> dict[str, int]:
        rows = self._db.execute(
            "SELECT status, COUNT(*) FROM device_jobs WHERE job_id = ? GROUP BY status", (job_id,)
        ).fetchall()
        return {status: int(n) for status, n in rows}

    @staticmethod
    def statistics(counts: dict[str, int]) -> dict[str, int]:
        """``deviceJobStatistics`` derived from record counts (never stored separately)."""
        return {
            "deviceCount": sum(counts.values()),
            "failedCount": counts.get("failed", 0),
            "succeededCount": counts.get("completed", 0),
            "runningCount": counts.get("running", 0),
            "pendingCount": counts.get("pending", 0) + counts.get("scheduled", 0),
            "canceledCount": counts.get("canceled", 0),
        }
