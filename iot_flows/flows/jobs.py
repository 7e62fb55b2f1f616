"""Job flows (seed 000): a direct method or a desired-property update over a twin query."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger
from pydantic import BaseModel, Field

from iot_flows._exceptions import JobFailedError
from iot_flows.flows._common import JobSummary, follow_job, new_job_id, summarize_job
from iot_flows.flows._connection import ConnectionRef, resolve_connection
from iot_flows.flows._ui import (
    apply_overrides,
    artifact_key,
    check_matched,
    completed,
    n_devices,
    outcome_line,
    param,
    run_name,
)
from iot_flows.tasks import create_method_job, create_twin_update_job, query_twins

__all__ = ["MethodJobRequest", "TwinUpdateJobRequest", "count_matching", "precheck", "run_method_job", "run_twin_update_job"]


class MethodJobRequest(BaseModel):
    """A direct method to run on every device a query selects."""

    method_name: str = Field(description="Direct method, e.g. lockDoor.")
    payload: Any = Field(default=None, description="JSON payload sent to each device.")
    query_condition: str = Field(default="*", description="WHERE body selecting devices ('*' = all).")
    start_time: datetime | None = Field(default=None, description="Start later (UTC); empty = now.")
    response_timeout_seconds: int = Field(default=30, ge=5, le=300)
    connect_timeout_seconds: int = Field(default=0, ge=0, le=300)
    max_execution_time_seconds: int = Field(default=3600, ge=1)
    wait_for_offline_devices: bool = Field(default=False, description="iot-flows hub extension.")
    max_failure_ratio: float = Field(default=0.0, ge=0, le=1, description="Fail the flow above this share.")
    poll_interval_seconds: float = Field(default=1.0, gt=0)
    job_id: str | None = Field(default=None, description="Job id; generated when empty.")


class TwinUpdateJobRequest(BaseModel):
    """Desired properties (and/or tags) to set on every device a query selects."""

    query_condition: str = Field(description="WHERE body selecting devices ('*' = all).")
    desired: dict[str, Any] | None = Field(default=None, description="Desired-property merge patch.")
    tags: dict[str, Any] | None = Field(default=None, description="Tags merge patch.")
    start_time: datetime | None = None
    max_execution_time_seconds: int = Field(default=3600, ge=1)
    poll_interval_seconds: float = Field(default=1.0, gt=0)
    job_id: str | None = None


async def count_matching(conn: Any, condition: str) -> int:
    """How many devices ``condition`` (a WHERE body, ``*`` = all) selects now."""
    where = "" if condition.strip() == "*" else f" WHERE {condition}"
    rows = await query_twins(conn, f"SELECT COUNT() AS n FROM devices{where}")
    return int(rows[0]["n"]) if rows else 0


async def precheck(conn: Any, condition: str, min_devices: int, what: str) -> None:
    """Fail before starting anything when fewer than ``min_devices`` devices match (skipped at 0)."""
    if min_devices > 0:
        check_matched(await count_matching(conn, condition), condition, min_devices, what)


async def _create_and_follow(
    conn: Any,
    job_id: str,
    create: Callable[[], Awaitable[object]],
    *,
    what: str,
    condition: str,
    min_devices: int,
    poll_interval: float,
    max_execution_time: int,
    key: str,
) -> JobSummary:
    """The sequence every job flow runs: precheck, ``create()`` the job, follow it, summarise it.

    ``max_execution_time`` (s) is the job's; following gives up 60 s after it. Raises what
    :func:`precheck`, ``create`` and :func:`follow_job` raise.
    """
    await precheck(conn, condition, min_devices, what)
    started = time.monotonic()
    await create()
    title = f"{what} on {condition}"
    job = await follow_job(conn, job_id, poll_interval=poll_interval, max_wait=max_execution_time + 60, title=title)
    return await summarize_job(conn, job, started, key=key, title=title)


def _done(summary: JobSummary, condition: str, min_devices: int, what: str) -> Any:
    """The final state: ``0 devices matched ...`` or the outcome counts in its message."""
    zero = check_matched(summary.device_count, condition, min_devices, what)
    counts = outcome_line(summary.succeeded + summary.failed + summary.canceled, summary.succeeded, summary.failed,
                          canceled=summary.canceled)  # fmt: skip
    return completed(summary, zero or f"{what} on {n_devices(summary.device_count)}: {counts}")


def _check(summary: JobSummary, max_failure_ratio: float) -> JobSummary:
    if summary.status != "completed":
        raise JobFailedError(f"job {summary.job_id} ended {summary.status}", summary=summary)
    if summary.failure_ratio > max_failure_ratio:
        raise JobFailedError(
            f"job {summary.job_id}: {summary.failed}/{summary.device_count} devices failed "
            f"(allowed {max_failure_ratio:.0%})",
            summary=summary,
        )
    return summary


@flow(name="Run a direct-method job", log_prints=True,
      flow_run_name=run_name(lambda p: f"{param(p, 'method_name')} · {param(p, 'query_condition', '*')}"))  # fmt: skip
async def run_method_job(
    request: MethodJobRequest,
    connection: ConnectionRef = None,
    query_condition: str | None = None,
    min_devices: int = 0,
) -> JobSummary:
    """Schedule a method job over a query and follow it to completion (seed 000 ``MonitorJob``).

    Args:
        request: what to invoke and on which devices.
        connection: a :class:`HubConnection`, a saved block's name, or None (embedded hub).
        query_condition: overrides ``request.query_condition`` (one flat parameter to change per run).
        min_devices: fail with :class:`TooFewDevicesError` when fewer devices match.

    Returns:
        A :class:`JobSummary` with counts and the devices that failed (the final state's
        message counts them, or says ``0 devices matched <condition>``).

    Raises:
        JobFailedError: the job failed or was cancelled, or too many devices failed.
        TooFewDevicesError: fewer than ``min_devices`` devices matched.
    """
    request = apply_overrides(request, query_condition=query_condition)
    what = request.method_name
    conn = await resolve_connection(connection)
    job_id = request.job_id or new_job_id(f"method-{request.method_name.lower()}")

    async def create() -> None:
        await create_method_job(
            conn, job_id, request.method_name, request.query_condition, request.payload,
            start_time=request.start_time, response_timeout=request.response_timeout_seconds,
            connect_timeout=request.connect_timeout_seconds, max_execution_time=request.max_execution_time_seconds,
            wait_for_offline_devices=request.wait_for_offline_devices,
        )  # fmt: skip
        get_run_logger().info("created method job %s (%s on %s)", job_id, request.method_name, request.query_condition)

    summary = await _create_and_follow(
        conn, job_id, create, what=what, condition=request.query_condition, min_devices=min_devices,
        poll_interval=request.poll_interval_seconds, max_execution_time=request.max_execution_time_seconds,
        key=artifact_key("method-job", request.method_name),
    )  # fmt: skip
    return _done(_check(summary, request.max_failure_ratio), request.query_condition, min_devices, what)  # type: ignore[no-any-return]


@flow(name="Update desired properties across devices", log_prints=True,
      flow_run_name=run_name(lambda p: f"twin update · {param(p, 'query_condition', '*')}"))  # fmt: skip
async def run_twin_update_job(
    request: TwinUpdateJobRequest,
    connection: ConnectionRef = None,
    query_condition: str | None = None,
    min_devices: int = 0,
) -> JobSummary:
    """Schedule a twin-update job (seed 000 ``Building``/``Floor``) and follow it to completion.

    ``query_condition`` overrides the request's; ``min_devices`` as in :func:`run_method_job`.

    Raises:
        JobFailedError: the job did not complete, or any device update failed.
        TooFewDevicesError: fewer than ``min_devices`` devices matched.
    """
    if request.desired is None and request.tags is None:
        raise ValueError("set desired and/or tags")
    request = apply_overrides(request, query_condition=query_condition)
    conn = await resolve_connection(connection)
    job_id = request.job_id or new_job_id("twin-update")
    summary = await _create_and_follow(
        conn, job_id,
        lambda: create_twin_update_job(
            conn, job_id, request.query_condition, desired=request.desired, tags=request.tags,
            start_time=request.start_time, max_execution_time=request.max_execution_time_seconds,
        ),
        what="twin update", condition=request.query_condition, min_devices=min_devices,
        poll_interval=request.poll_interval_seconds, max_execution_time=request.max_execution_time_seconds,
        key="twin-update-job",
    )  # fmt: skip
    return _done(_check(summary, 0.0), request.query_condition, min_devices, "twin update")  # type: ignore[no-any-return]
