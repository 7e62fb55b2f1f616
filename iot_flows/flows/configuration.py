"""Configuration and property flows (the 2016 preview job types of seed 001, on twins).

* configuration update: desired ``config`` over a query, confirmed when each device
  reports it applied (``status: Success``) the desired version it acknowledged;
* read device property: the reported value of one property on each selected device;
* write device property: a desired value, confirmed when the device reports it back.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow
from pydantic import BaseModel, Field

from iot_flows._exceptions import ConfirmationTimeoutError, JobFailedError
from iot_flows.flows._common import JobSummary, confirm_reported, reported_value
from iot_flows.flows._connection import ConnectionRef, resolve_connection
from iot_flows.flows._ui import (
    apply_overrides,
    artifact_key,
    completed,
    n_devices,
    outcome_line,
    param,
    report_outcome,
    run_name,
)
from iot_flows.flows.jobs import TwinUpdateJobRequest, precheck, run_twin_update_job
from iot_flows.tasks import get_twins, query_twins

__all__ = [
    "ConfigurationRequest",
    "PropertyReadRequest",
    "PropertyWriteRequest",
    "PropertyWriteResult",
    "read_device_property",
    "update_configuration",
    "write_device_property",
]


async def _device_ids(conn: Any, condition: str) -> list[str]:
    where = "" if condition.strip() == "*" else f" WHERE {condition}"
    return sorted(r["deviceId"] for r in await query_twins(conn, f"SELECT deviceId FROM devices{where}"))


class PropertyWriteRequest(BaseModel):
    """Write ``properties.desired.<name>`` and (optionally) wait for the device to report it."""

    name: str = Field(description="Top-level desired property, e.g. telemetryConfig.")
    value: Any = Field(description="JSON value to write.")
    query_condition: str = Field(default="*")
    confirm: bool = Field(default=True, description="Wait for reported.<name> to match.")
    confirm_timeout_seconds: float = Field(default=120, gt=0)
    poll_interval_seconds: float = Field(default=1.0, gt=0)


class PropertyWriteResult(BaseModel):
    """Result of a desired-property write: the job summary and which devices confirmed (reported the value) or failed."""
    job: JobSummary
    confirmed: list[str] = Field(default_factory=list)
    failed: list[str] = Field(default_factory=list)
    not_confirmed: list[str] = Field(default_factory=list)
    duration_seconds: float = 0.0


def _matches(expected: Any, reported: Any) -> bool:
    if isinstance(expected, dict):
        return isinstance(reported, dict) and all(_matches(v, reported.get(k)) for k, v in expected.items())
    return bool(expected == reported)


async def _write_and_confirm(
    request: PropertyWriteRequest, connection: ConnectionRef, title: str, key: str, min_devices: int = 0
) -> Any:
    conn = await resolve_connection(connection)
    await precheck(conn, request.query_condition, min_devices, title)
    t0 = time.monotonic()
    job = await run_twin_update_job(
        TwinUpdateJobRequest(query_condition=request.query_condition, desired={request.name: request.value},
                             poll_interval_seconds=request.poll_interval_seconds),
        connection=conn,
    )  # fmt: skip
    result = PropertyWriteResult(job=job)
    if request.confirm:
        ids = await _device_ids(conn, request.query_condition)

        def check(twin: dict[str, Any] | None) -> bool | None:
            reported = reported_value(twin, request.name)
            if isinstance(reported, dict) and reported.get("status") == "Failed":
                return False
            return True if _matches(request.value, reported) else None

        result.confirmed, result.failed, result.not_confirmed = await confirm_reported(
            conn, ids, check, timeout=request.confirm_timeout_seconds, poll_interval=request.poll_interval_seconds
        )
    result.duration_seconds = round(time.monotonic() - t0, 3)
    counts = outcome_line(job.device_count, len(result.confirmed), len(result.failed),
                          not_confirmed=len(result.not_confirmed))  # fmt: skip
    message = await report_outcome(
        title, job.device_count, request.query_condition, min_devices, counts,
        [{"property": request.name, "devices": job.device_count, "confirmed": len(result.confirmed),
          "failed": len(result.failed), "not confirmed": len(result.not_confirmed)}],
        key=key, description=f"{title} on {n_devices(job.device_count)} ({request.query_condition}): {counts}",
        message=f"{title} on {n_devices(job.device_count)}: {counts}",
    )  # fmt: skip
    if result.failed:
        raise JobFailedError(f"{n_devices(len(result.failed))} failed to apply {request.name}", summary=result)
    if result.not_confirmed:
        raise ConfirmationTimeoutError(f"{n_devices(len(result.not_confirmed))} did not confirm {request.name}", summary=result)
    return completed(result, message)


@flow(name="Write a device property", log_prints=True,
      flow_run_name=run_name(lambda p: f"write {param(p, 'name')} · {param(p, 'query_condition', '*')}"))  # fmt: skip
async def write_device_property(
    request: PropertyWriteRequest, connection: ConnectionRef = None, query_condition: str | None = None, min_devices: int = 0
) -> PropertyWriteResult:
    """Deep write: set a desired property on the selected devices and confirm each reports it.

    ``query_condition`` overrides the request's; fewer matching devices than ``min_devices``
    fail the run with :class:`TooFewDevicesError` before anything starts.

    Raises:
        JobFailedError: a device reported the write as failed.
        ConfirmationTimeoutError: devices did not report the value in time.
    """
    request = apply_overrides(request, query_condition=query_condition)
    return await _write_and_confirm(  # type: ignore[no-any-return]
        request, connection, f"write {request.name}", artifact_key("write-property", request.name), min_devices
    )


class ConfigurationRequest(BaseModel):
    """A configuration document for the device agent (desired ``config``)."""

    config: dict[str, Any] = Field(description="Configuration, e.g. {'telemetryIntervalSeconds': 60}.")
    query_condition: str = Field(default="*")
    confirm_timeout_seconds: float = Field(default=300, gt=0)
    poll_interval_seconds: float = Field(default=1.0, gt=0)


@flow(name="Update device configuration", log_prints=True,
      flow_run_name=run_name(lambda p: f"configuration · {param(p, 'query_condition', '*')}"))  # fmt: skip
async def update_configuration(
    request: ConfigurationRequest, connection: ConnectionRef = None, query_condition: str | None = None, min_devices: int = 0
) -> PropertyWriteResult:
    """Configuration update: desired ``config`` over a query, confirmed by each device's report."""
    request = apply_overrides(request, query_condition=query_condition)
    write = PropertyWriteRequest(
        name="config", value=request.config, query_condition=request.query_condition,
        confirm_timeout_seconds=request.confirm_timeout_seconds, poll_interval_seconds=request.poll_interval_seconds,
    )  # fmt: skip
    return await _write_and_confirm(  # type: ignore[no-any-return]
        write, connection, "configuration update", "configuration-update", min_devices
    )


class PropertyReadRequest(BaseModel):
    """Read ``properties.reported.<path>`` from the selected devices."""

    path: str = Field(description="Dotted path under properties.reported, e.g. firmware.currentFwVersion.")
    query_condition: str = Field(default="*")


@flow(name="Read a device property", log_prints=True,
      flow_run_name=run_name(lambda p: f"read {param(p, 'path')} · {param(p, 'query_condition', '*')}"))  # fmt: skip
async def read_device_property(
    request: PropertyReadRequest, connection: ConnectionRef = None, query_condition: str | None = None, min_devices: int = 0
) -> dict[str, Any]:
    """Read one reported property per device (through GET twin, exact on Azure too).

    Returns:
        ``{device_id: value}`` (None where the device has not reported it).

    Raises:
        TooFewDevicesError: fewer than ``min_devices`` devices matched.
    """
    request = apply_overrides(request, query_condition=query_condition)
    conn = await resolve_connection(connection)
    ids = await _device_ids(conn, request.query_condition)
    twins = await get_twins(conn, ids)
    values = {d: reported_value(twins.get(d), request.path) for d in ids}
    reported = sum(v is not None for v in values.values())
    counts = f"{n_devices(len(ids))}: {reported} reported {request.path}, {len(ids) - reported} did not"
    message = await report_outcome(
        f"read {request.path}", len(ids), request.query_condition, min_devices, counts,
        [{"device": d, request.path: v} for d, v in list(values.items())[:1000]] or [{"device": "-", request.path: None}],
        key=artifact_key("read-property", request.path),
        description=f"reported.{request.path} of {counts} ({request.query_condition})",
        message=f"read {request.path} on {counts}",
    )
    return completed(values, message)  # type: ignore[return-value]
