"""What every fleet flow shares: following a hub job, confirming reported state, summaries.

Polling lives in flows (one ``get_job`` / ``get_twins`` task per poll round, with a
growing interval), never one task per device: the Prefect server drops task runs
past a few thousand per flow (docs/architecture.md §3).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import acreate_progress_artifact, acreate_table_artifact, aupdate_progress_artifact
from pydantic import BaseModel, Field

from iot_flows._exceptions import ConfirmationTimeoutError
from iot_flows.blocks import HubConnection
from iot_flows.flows._events import emit_job_event
from iot_flows.flows._ui import n_devices, outcome_line
from iot_flows.jobs import TERMINAL_JOB_STATES
from iot_flows.tasks import get_job, get_twins, query_device_jobs

__all__ = [
    "DeviceFailure",
    "JobSummary",
    "confirm_reported",
    "follow_job",
    "new_job_id",
    "reported_value",
    "summarize_job",
]


class DeviceFailure(BaseModel):
    """One device that did not succeed, and why."""

    device_id: str
    code: str | None = None
    description: str | None = None
    device_status: int | None = None


class JobSummary(BaseModel):
    """The structured result of a job-based flow."""

    job_id: str
    job_type: str
    status: str
    device_count: int = 0
    succeeded: int = 0
    failed: int = 0
    canceled: int = 0
    failures: list[DeviceFailure] = Field(default_factory=list)
    duration_seconds: float = 0.0

    @property
    def failure_ratio(self) -> float:
        """Failed devices / devices in the job (0.0 for an empty job)."""
        return self.failed / self.device_count if self.device_count else 0.0


def new_job_id(prefix: str) -> str:
    """A job id IoT Hub accepts: <= 64 chars of letters, digits and '-'."""
    return f"{prefix}-{uuid.uuid4().hex[:16]}"[:64]


def reported_value(twin: dict[str, Any] | None, path: str) -> Any:
    """``properties.reported.<path>`` of a twin, or None when absent."""
    node: Any = (twin or {}).get("properties", {}).get("reported", {})
    for part in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


async def follow_job(
    connection: HubConnection,
    job_id: str,
    *,
    poll_interval: float = 1.0,
    max_poll_interval: float = 10.0,
    max_wait: float = 3600.0,
    title: str = "job",
) -> dict[str, Any]:
    """Poll a job until it is terminal (the C# ``MonitorJob`` loop), with a progress artifact.

    ``title`` says what the job does (``"lockDoor on tags.building = '43'"``); the progress
    card and the log lines count devices by outcome.
    """
    logger = get_run_logger()
    artifact = await acreate_progress_artifact(0.0, description=f"{title}: starting (job {job_id})")
    deadline = time.monotonic() + max_wait
    interval = poll_interval
    last = None
    while True:
        job = await get_job(connection, job_id)
        stats = job.get("deviceJobStatistics") or {}
        total = stats.get("deviceCount") or 0
        ok, bad, canceled = (stats.get(k) or 0 for k in ("succeededCount", "failedCount", "canceledCount"))
        done = ok + bad + canceled
        progress = 100.0 if job["status"] in TERMINAL_JOB_STATES else (100.0 * done / total if total else 0.0)
        counts = f"{done}/{total} devices done: {ok} succeeded, {bad} failed" + (f", {canceled} canceled" if canceled else "")
        await aupdate_progress_artifact(artifact, progress, description=f"{title}: {job['status']}, {counts}")
        line = (job["status"], done, total)
        if line != last:
            logger.info("job %s %s: %s", job_id, job["status"], outcome_line(done, ok, bad, canceled=canceled)
                        + (f" of {n_devices(total)}" if job["status"] not in TERMINAL_JOB_STATES else ""))  # fmt: skip
            last = line
        if job["status"] in TERMINAL_JOB_STATES:
            emit_job_event(job)
            return job
        if time.monotonic() > deadline:
            raise ConfirmationTimeoutError(f"job {job_id} still {job['status']} after {max_wait:.0f} s", summary=job)
        await asyncio.sleep(interval)
        interval = min(interval * 1.5, max_poll_interval)


async def summarize_job(
    connection: HubConnection, job: dict[str, Any], started: float, *, key: str | None = None, title: str | None = None
) -> JobSummary:
    """Build the summary, a table artifact under ``key`` and one of the devices that did not succeed.

    ``key`` is a stable artifact key (``method-job-lockdoor``: one history per operation);
    ``title`` says what ran on which devices.
    """
    stats = job.get("deviceJobStatistics") or {}
    failures: list[DeviceFailure] = []
    if stats.get("failedCount"):
        for record in await query_device_jobs(connection, job["jobId"], status="failed"):
            error = record.get("error") or {}
            response = (record.get("outcome") or {}).get("deviceMethodResponse") or {}
            failures.append(
                DeviceFailure(
                    device_id=record["deviceId"],
                    code=error.get("code"),
                    description=error.get("description"),
                    device_status=response.get("status"),
                )
            )
    summary = JobSummary(
        job_id=job["jobId"],
        job_type=job["type"],
        status=job["status"],
        device_count=stats.get("deviceCount", 0),
        succeeded=stats.get("succeededCount", 0),
        failed=stats.get("failedCount", 0),
        canceled=stats.get("canceledCount", 0),
        failures=failures,
        duration_seconds=round(time.monotonic() - started, 3),
    )
    rows = [
        {"job": summary.job_id, "status": summary.status, "devices": summary.device_count,
         "succeeded": summary.succeeded, "failed": summary.failed, "canceled": summary.canceled}
    ]  # fmt: skip
    what = title or summary.job_type
    counts = outcome_line(summary.succeeded + summary.failed + summary.canceled, summary.succeeded, summary.failed,
                          canceled=summary.canceled)  # fmt: skip
    await acreate_table_artifact(
        rows, key=key, description=f"{what}: {n_devices(summary.device_count)}, {counts} (job {summary.job_id}, {summary.status})"
    )
    if failures:
        await acreate_table_artifact(
            [f.model_dump() for f in failures[:500]], key=f"{key}-failures" if key else None,
            description=f"{what}: the {n_devices(summary.failed)} that failed (job {summary.job_id})",
        )  # fmt: skip
    return summary


#: A check of one twin: True = done, False = failed for good, None = not yet.
TwinCheck = Callable[[dict[str, Any] | None], bool | None]


async def confirm_reported(
    connection: HubConnection,
    device_ids: list[str],
    check: TwinCheck,
    *,
    timeout: float,
    poll_interval: float = 1.0,
    max_poll_interval: float = 5.0,
    on_round: Callable[[dict[str, dict[str, Any] | None]], Any] | None = None,
) -> tuple[list[str], list[str], list[str]]:
    """Poll twins with GET (never a lagging query) until each device passes or fails ``check``.

    Returns:
        ``(confirmed, failed, timed_out)`` device ids.
    """
    remaining = set(device_ids)
    confirmed: list[str] = []
    failed: list[str] = []
    deadline = time.monotonic() + timeout
    interval = poll_interval
    while remaining:
        twins = await get_twins(connection, sorted(remaining))
        if on_round is not None:
            await on_round(twins) if asyncio.iscoroutinefunction(on_round) else on_round(twins)
        for device_id, twin in twins.items():
            verdict = check(twin)
            if verdict is True:
                confirmed.append(device_id)
                remaining.discard(device_id)
            elif verdict is False:
                failed.append(device_id)
                remaining.discard(device_id)
        if not remaining or time.monotonic() > deadline:
            break
        await asyncio.sleep(min(interval, max(deadline - time.monotonic(), 0)))
        interval = min(interval * 1.5, max_poll_interval)
    return sorted(confirmed), sorted(failed), sorted(remaining)
