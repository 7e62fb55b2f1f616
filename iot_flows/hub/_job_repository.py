"""Persistence of jobs and per-device job records, over the hub's store interface.

Writes are batched: a fan-out over 10,000 devices commits its records in chunks, one
transaction each, instead of one transaction per device. The SQL lives in the store's
backends; this module speaks job states and domain errors.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from typing import Any

from iot_flows._exceptions import JobNotFoundError
from iot_flows.jobs import DeviceJobStatus, JobStatus
from iot_flows.store import HubStore

__all__ = ["DeviceOutcome", "JobRepository"]

#: (device_id, status, start_time_utc, end_time_utc, outcome JSON | None, error JSON | None)
DeviceOutcome = tuple[str, DeviceJobStatus, str | None, str | None, Any, Any]


class JobRepository:
    """Jobs and device records in the store."""

    def __init__(self, store: HubStore) -> None:
        self._store = store

    async def insert(self, job_id: str, job_type: str, status: JobStatus, created: str, doc: dict[str, Any]) -> None:
        """Store a new job; raises JobAlreadyExistsError (409) when the id is taken."""
        await self._store.insert_job(job_id, job_type, status.value, created, doc)

    async def save(self, doc: dict[str, Any]) -> None:
        """Write the job document (status, times, failure reason)."""
        await self._store.save_job(doc)

    async def get(self, job_id: str) -> dict[str, Any]:
        """The job document; raises JobNotFoundError (404) when there is none."""
        doc = await self._store.get_job(job_id)
        if doc is None:
            raise JobNotFoundError(f"Job '{job_id}' not found.")
        return doc

    async def active(self) -> builtins.list[dict[str, Any]]:
        """Documents of every job not yet in a terminal state."""
        return await self._store.active_jobs()

    async def count_active(self) -> int:
        """How many jobs are not yet in a terminal state."""
        return await self._store.count_active_jobs()

    async def list(self, *, job_type: str | None, status: str | None, after: str, limit: int) -> builtins.list[dict[str, Any]]:
        """Jobs ordered by (created_time, job_id); ``after`` is ``created_time|job_id`` of the last seen."""
        return await self._store.list_jobs(job_type=job_type, status=status, after=after, limit=limit)

    # ---- device records -----------------------------------------------------------------
    async def select_devices(self, condition: str) -> builtins.list[str]:
        """Device ids matching a job ``queryCondition``, at this moment."""
        return await self._store.select_device_ids(condition)

    async def add_devices(
        self, job_id: str, job_type: str, device_ids: Iterable[str], status: DeviceJobStatus, now: str
    ) -> None:
        """Insert one device-job row per device id, in ``status``."""
        await self._store.add_device_jobs(job_id, job_type, device_ids, status.value, now)

    async def mark_running(self, job_id: str, device_ids: builtins.list[str], now: str) -> None:
        """Mark the rows of ``device_ids`` running (committed before their requests are sent)."""
        await self._store.mark_device_jobs_running(job_id, device_ids, now)

    async def record(self, job_id: str, outcomes: builtins.list[DeviceOutcome], now: str) -> None:
        """Store final outcomes: ``(device, status, start, end, outcome, error)`` tuples."""
        await self._store.record_device_outcomes(
            job_id, [(d, s.value, start, end, out, err) for d, s, start, end, out, err in outcomes], now
        )

    async def set_status_where(
        self, job_id: str, from_states: Iterable[DeviceJobStatus], to: DeviceJobStatus, now: str, error: Any = None
    ) -> int:
        """Move every row of the job in ``from_states`` to ``to`` (with ``error``); return how many moved."""
        return await self._store.set_device_jobs_status_where(
            job_id, [s.value for s in from_states], to.value, now, error
        )

    async def device_ids(self, job_id: str, status: DeviceJobStatus) -> builtins.list[str]:
        """Ids of the job's devices in ``status``."""
        return await self._store.device_job_ids(job_id, status.value)

    async def counts(self, job_id: str) -> dict[str, int]:
        """Device-job row counts by status name."""
        return await self._store.device_job_counts(job_id)

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
