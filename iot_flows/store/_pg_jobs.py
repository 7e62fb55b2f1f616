"""Job records of the PostgreSQL store: the ``jobs`` and ``device_jobs`` tables.

One part of :class:`~iot_flows.store._postgres.PostgresStore`; the contract of each
method is on :class:`~iot_flows.store.HubStore`.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Iterable
from typing import Any

from iot_flows._exceptions import JobAlreadyExistsError
from iot_flows.query import POSTGRES, compile_condition
from iot_flows.store._base import DeviceOutcome, JsonText
from iot_flows.store._pg_pool import PostgresConnections, _rowcount
from iot_flows.store._rows import dumps

__all__ = ["PostgresJobs"]

_ACTIVE = "('queued', 'scheduled', 'running')"



def _json(value: Any) -> str | None:
    """A record's outcome/error column: None, the given JsonText, or ``value`` encoded."""
    if value is None:
        return None
    return value if value.__class__ is JsonText else dumps(value)

class PostgresJobs(PostgresConnections):
    """Job documents and per-device job rows (``jobs``, ``device_jobs``) in PostgreSQL."""

    # ---- jobs -----------------------------------------------------------------------
    async def insert_job(self, job_id: str, job_type: str, status: str, created: str, doc: dict[str, Any]) -> None:
        result = await self._execute(
            "INSERT INTO jobs (job_id, type, status, created_time, doc) VALUES ($1, $2, $3, $4, $5::jsonb)"
            " ON CONFLICT (job_id) DO NOTHING",
            job_id, job_type, status, created, dumps(doc),
        )  # fmt: skip
        if _rowcount(result) == 0:
            raise JobAlreadyExistsError(f"A job with id '{job_id}' already exists.")

    async def save_job(self, doc: dict[str, Any]) -> None:
        await self._execute(
            "UPDATE jobs SET status = $2, doc = $3::jsonb WHERE job_id = $1", doc["jobId"], doc["status"], dumps(doc)
        )

    async def get_job(self, job_id: str) -> dict[str, Any] | None:
        row = await self._fetchrow("SELECT doc FROM jobs WHERE job_id = $1", job_id)
        return json.loads(row[0]) if row else None

    async def active_jobs(self) -> builtins.list[dict[str, Any]]:
        rows = await self._fetch(f"SELECT doc FROM jobs WHERE status IN {_ACTIVE} ORDER BY created_time, job_id")
        return [json.loads(r[0]) for r in rows]

    async def count_active_jobs(self) -> int:
        row = await self._fetchrow(f"SELECT COUNT(*) FROM jobs WHERE status IN {_ACTIVE}")
        return int(row[0])

    async def list_jobs(
        self, *, job_type: str | None, status: str | None, after: str, limit: int
    ) -> builtins.list[dict[str, Any]]:
        where, params = ["(created_time || '|' || job_id) > $1"], [after]
        if job_type:
            params.append(job_type)
            where.append(f"type = ${len(params)}")
        if status:
            params.append(status)
            where.append(f"status = ${len(params)}")
        params.append(limit)  # type: ignore[arg-type]
        rows = await self._fetch(
            f"SELECT doc FROM jobs WHERE {' AND '.join(where)} ORDER BY created_time, job_id LIMIT ${len(params)}",
            *params,
        )
        return [json.loads(r[0]) for r in rows]

    async def select_device_ids(self, condition: str) -> builtins.list[str]:
        where_sql, params = compile_condition(condition, POSTGRES)
        rows = await self._fetch(f"SELECT device_id FROM devices WHERE {where_sql} ORDER BY device_id", *params)
        return [r[0] for r in rows]

    async def add_device_jobs(
        self, job_id: str, job_type: str, device_ids: Iterable[str], status: str, now: str
    ) -> None:
        ids = list(device_ids)
        if ids:
            await self._execute(
                "INSERT INTO device_jobs (job_id, device_id, job_type, status, created_date_time_utc,"
                " last_updated_date_time_utc) SELECT $1, d, $2, $3, $4, $4 FROM unnest($5::text[]) AS d"
                " ON CONFLICT DO NOTHING",
                job_id, job_type, status, now, ids,
            )  # fmt: skip

    async def mark_device_jobs_running(self, job_id: str, device_ids: builtins.list[str], now: str) -> None:
        await self._execute(
            "UPDATE device_jobs SET status = 'running', start_time_utc = $2, last_updated_date_time_utc = $2"
            " WHERE job_id = $1 AND device_id = ANY($3::text[])",
            job_id, now, device_ids,
        )  # fmt: skip

    async def record_device_outcomes(self, job_id: str, outcomes: builtins.list[DeviceOutcome], now: str) -> None:
        if not outcomes:
            return
        if len({o[0] for o in outcomes}) < len(outcomes):  # a device twice: its last record stands
            outcomes = list({o[0]: o for o in outcomes}.values())
        # one statement over arrays (``unnest``), not one per record
        await self._execute(
            "UPDATE device_jobs AS j SET status = v.status, start_time_utc = COALESCE(j.start_time_utc, v.start),"
            " end_time_utc = v.finish, outcome = v.outcome::jsonb, error = v.error::jsonb,"
            " last_updated_date_time_utc = $2"
            " FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[])"
            " AS v(device_id, status, start, finish, outcome, error)"
            " WHERE j.job_id = $1 AND j.device_id = v.device_id",
            job_id,
            now,
            [o[0] for o in outcomes],
            [o[1] for o in outcomes],
            [o[2] for o in outcomes],
            [o[3] for o in outcomes],
            [_json(o[4]) for o in outcomes],
            [_json(o[5]) for o in outcomes],
        )

    async def set_device_jobs_status_where(
        self, job_id: str, from_states: Iterable[str], to: str, now: str, error: Any = None
    ) -> int:
        result = await self._execute(
            "UPDATE device_jobs SET status = $2, end_time_utc = $3, last_updated_date_time_utc = $3, error = $4::jsonb"
            " WHERE job_id = $1 AND status = ANY($5::text[])",
            job_id, to, now, dumps(error) if error is not None else None, list(from_states),
        )  # fmt: skip
        return _rowcount(result)

    async def device_job_ids(self, job_id: str, status: str) -> builtins.list[str]:
        rows = await self._fetch(
            "SELECT device_id FROM device_jobs WHERE job_id = $1 AND status = $2 ORDER BY device_id", job_id, status
        )
        return [r[0] for r in rows]

    async def device_job_counts(self, job_id: str) -> dict[str, int]:
        rows = await self._fetch("SELECT status, COUNT(*) FROM device_jobs WHERE job_id = $1 GROUP BY status", job_id)
        return {r[0]: int(r[1]) for r in rows}
