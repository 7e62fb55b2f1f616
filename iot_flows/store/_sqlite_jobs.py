"""Job records of the SQLite store: the ``jobs`` and ``device_jobs`` tables.

One part of :class:`~iot_flows.store._sqlite.SqliteStore`; writes run on its writer
connection (see that module for the durability rules). The contract of each method
is on :class:`~iot_flows.store.HubStore`.
"""

from __future__ import annotations

import builtins
import functools
import json
import sqlite3
from collections.abc import Iterable
from typing import Any

from iot_flows._exceptions import JobAlreadyExistsError
from iot_flows.query import compile_condition
from iot_flows.store._base import DeviceOutcome, HubStore, JsonText
from iot_flows.store._rows import dumps

__all__ = ["SqliteJobs"]

_ACTIVE = "('queued', 'scheduled', 'running')"



def _json(value: Any) -> str | None:
    """A record's outcome/error column: None, the given JsonText, or ``value`` encoded."""
    if value is None:
        return None
    return value if value.__class__ is JsonText else dumps(value)

#: Device ids per ``IN (...)`` list, records per ``VALUES`` list (SQLite allows 32,766 parameters).
_IN_CHUNK = 500
_VALUES_CHUNK = 200


@functools.lru_cache(maxsize=64)
def _marks(n: int) -> str:
    return ",".join("?" * n)


@functools.lru_cache(maxsize=64)
def _record_sql(n: int) -> str:
    """``UPDATE device_jobs`` from ``n`` rows of (device, status, start, end, outcome, error)."""
    values = ",".join(["(?,?,?,?,?,?)"] * n)
    return (
        "UPDATE device_jobs SET status = v.column2, start_time_utc = COALESCE(start_time_utc, v.column3),"
        " end_time_utc = v.column4, outcome = v.column5, error = v.column6, last_updated_date_time_utc = ?"
        f" FROM (VALUES {values}) AS v WHERE device_jobs.job_id = ? AND device_jobs.device_id = v.column1"
    )


class SqliteJobs(HubStore):
    """Job documents and per-device job rows (``jobs``, ``device_jobs``) in SQLite."""

    #: the writer connection (set by the store)
    _conn: sqlite3.Connection

    # ---- jobs ---------------------------------------------------------------------
    async def insert_job(self, job_id: str, job_type: str, status: str, created: str, doc: dict[str, Any]) -> None:
        try:
            self._conn.execute(
                "INSERT INTO jobs (job_id, type, status, created_time, doc) VALUES (?, ?, ?, ?, ?)",
                (job_id, job_type, status, created, dumps(doc)),
            )
        except sqlite3.IntegrityError:
            raise JobAlreadyExistsError(f"A job with id '{job_id}' already exists.") from None

    async def save_job(self, doc: dict[str, Any]) -> None:
        self._conn.execute(
            "UPDATE jobs SET status = ?, doc = ? WHERE job_id = ?", (doc["status"], dumps(doc), doc["jobId"])
        )

    async def get_job(self, job_id: str) -> dict[str, Any] | None:
        row = self._conn.execute("SELECT doc FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return json.loads(row[0]) if row else None

    async def active_jobs(self) -> builtins.list[dict[str, Any]]:
        rows = self._conn.execute(f"SELECT doc FROM jobs WHERE status IN {_ACTIVE} ORDER BY created_time").fetchall()
        return [json.loads(r[0]) for r in rows]

    async def count_active_jobs(self) -> int:
        return int(self._conn.execute(f"SELECT COUNT(*) FROM jobs WHERE status IN {_ACTIVE}").fetchone()[0])

    async def list_jobs(
        self, *, job_type: str | None, status: str | None, after: str, limit: int
    ) -> builtins.list[dict[str, Any]]:
        where, params = ["(created_time || '|' || job_id) > ?"], [after]
        if job_type:
            where.append("type = ?")
            params.append(job_type)
        if status:
            where.append("status = ?")
            params.append(status)
        rows = self._conn.execute(
            f"SELECT doc FROM jobs WHERE {' AND '.join(where)} ORDER BY created_time, job_id LIMIT ?",
            [*params, limit],
        ).fetchall()
        return [json.loads(r[0]) for r in rows]

    async def select_device_ids(self, condition: str) -> builtins.list[str]:
        where_sql, params = compile_condition(condition)
        rows = self._conn.execute(f"SELECT device_id FROM devices WHERE {where_sql} ORDER BY device_id", params).fetchall()
        return [r[0] for r in rows]

    async def add_device_jobs(
        self, job_id: str, job_type: str, device_ids: Iterable[str], status: str, now: str
    ) -> None:
        self._conn.executemany(
            "INSERT OR IGNORE INTO device_jobs (job_id, device_id, job_type, status, created_date_time_utc,"
            " last_updated_date_time_utc) VALUES (?, ?, ?, ?, ?, ?)",
            ((job_id, d, job_type, status, now, now) for d in device_ids),
        )

    async def mark_device_jobs_running(self, job_id: str, device_ids: builtins.list[str], now: str) -> None:
        # one statement per _IN_CHUNK devices (``IN (...)``), not one per device
        for start in range(0, len(device_ids), _IN_CHUNK):
            chunk = device_ids[start : start + _IN_CHUNK]
            self._conn.execute(
                "UPDATE device_jobs SET status = 'running', start_time_utc = ?, last_updated_date_time_utc = ?"
                f" WHERE job_id = ? AND device_id IN ({_marks(len(chunk))})",
                (now, now, job_id, *chunk),
            )

    async def record_device_outcomes(self, job_id: str, outcomes: builtins.list[DeviceOutcome], now: str) -> None:
        # one ``UPDATE ... FROM (VALUES ...)`` per _VALUES_CHUNK records, not one statement per record
        if len({o[0] for o in outcomes}) < len(outcomes):  # a device twice: its last record stands
            outcomes = list({o[0]: o for o in outcomes}.values())
        for start in range(0, len(outcomes), _VALUES_CHUNK):
            chunk = outcomes[start : start + _VALUES_CHUNK]
            params: builtins.list[Any] = [now]
            for device_id, status, begun, end, outcome, error in chunk:
                params += (device_id, status, begun, end, _json(outcome), _json(error))
            params.append(job_id)
            self._conn.execute(_record_sql(len(chunk)), params)

    async def set_device_jobs_status_where(
        self, job_id: str, from_states: Iterable[str], to: str, now: str, error: Any = None
    ) -> int:
        states = list(from_states)
        marks = ",".join("?" * len(states))
        cur = self._conn.execute(
            f"UPDATE device_jobs SET status = ?, end_time_utc = ?, last_updated_date_time_utc = ?, error = ?"
            f" WHERE job_id = ? AND status IN ({marks})",
            [to, now, now, dumps(error) if error is not None else None, job_id, *states],
        )
        return cur.rowcount

    async def device_job_ids(self, job_id: str, status: str) -> builtins.list[str]:
        rows = self._conn.execute(
            "SELECT device_id FROM device_jobs WHERE job_id = ? AND status = ? ORDER BY device_id", (job_id, status)
        ).fetchall()
        return [r[0] for r in rows]

    async def device_job_counts(self, job_id: str) -> dict[str, int]:
        rows = self._conn.execute(
            "SELECT status, COUNT(*) FROM device_jobs WHERE job_id = ? GROUP BY status", (job_id,)
        ).fetchall()
        return {status: int(n) for status, n in rows}
