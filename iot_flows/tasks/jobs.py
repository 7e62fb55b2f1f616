"""Job tasks: create, read, cancel and query ``/jobs/v2`` jobs (fan-out runs in the hub)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import task

from iot_flows.blocks import HubConnection
from iot_flows.tasks._retry import RETRY

__all__ = ["cancel_job", "create_method_job", "create_twin_update_job", "get_job", "query_device_jobs"]


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


@task(name="create_method_job", **RETRY)
async def create_method_job(
    connection: HubConnection,
    job_id: str,
    method_name: str,
    query_condition: str = "*",
    payload: Any = None,
    *,
    start_time: datetime | None = None,
    response_timeout: int = 30,
    connect_timeout: int = 0,
    max_execution_time: int = 3600,
    wait_for_offline_devices: bool = False,
) -> dict[str, Any]:
    """Schedule a direct method on every device the query selects (``scheduleDeviceMethod``).

    ``wait_for_offline_devices`` is an iot-flows hub extension (ignored by Azure).

    Safe to retry: a retry whose first attempt created the job adopts it (same spec).

    Raises:
        JobAlreadyExistsError: the id holds a job with another spec (not retried).
        ThrottledError: too many active jobs (429004, retried with backoff).
    """
    body: dict[str, Any] = {
        "type": "scheduleDeviceMethod",
        "queryCondition": query_condition,
        "cloudToDeviceMethod": {
            "methodName": method_name,
            "payload": payload,
            "responseTimeoutInSeconds": response_timeout,
            "connectTimeoutInSeconds": connect_timeout,
        },
        "maxExecutionTimeInSeconds": max_execution_time,
    }
    if start_time is not None:
        body["startTime"] = _iso(start_time)
    if wait_for_offline_devices:
        body["waitForOfflineDevices"] = True
    async with connection.get_client() as hub:
        return await hub.create_job(job_id, body)


@task(name="create_twin_update_job", **RETRY)
async def create_twin_update_job(
    connection: HubConnection,
    job_id: str,
    query_condition: str,
    *,
    desired: dict[str, Any] | None = None,
    tags: dict[str, Any] | None = None,
    start_time: datetime | None = None,
    max_execution_time: int = 3600,
) -> dict[str, Any]:
    """Schedule a twin update (desired properties and/or tags) over a query (``scheduleUpdateTwin``)."""
    update: dict[str, Any] = {"etag": "*"}
    if desired is not None:
        update["properties"] = {"desired": desired}
    if tags is not None:
        update["tags"] = tags
    body: dict[str, Any] = {
        "type": "scheduleUpdateTwin",
        "queryCondition": query_condition,
        "updateTwin": update,
        "maxExecutionTimeInSeconds": max_execution_time,
    }
    if start_time is not None:
        body["startTime"] = _iso(start_time)
    async with connection.get_client() as hub:
        return await hub.create_job(job_id, body)


@task(name="get_job", **RETRY)
async def get_job(connection: HubConnection, job_id: str) -> dict[str, Any]:
    """Read a job with its ``deviceJobStatistics``."""
    async with connection.get_client() as hub:
        return await hub.get_job(job_id)


@task(name="cancel_job", **RETRY)
async def cancel_job(connection: HubConnection, job_id: str) -> dict[str, Any]:
    """Cancel a job (on the bundled hub also while it runs)."""
    async with connection.get_client() as hub:
        return await hub.cancel_job(job_id)


@task(name="query_device_jobs", **RETRY)
async def query_device_jobs(connection: HubConnection, job_id: str, status: str | None = None) -> list[dict[str, Any]]:
    """Per-device records of a job (``SELECT * FROM devices.jobs WHERE devices.jobs.jobId = ...``)."""
    async with connection.get_client() as hub:
        return await hub.query_device_jobs(job_id, status=status)
