"""Device-management flows: reboot (seed 002), factory reset (seed 001), firmware update (seed 003).

Each starts the operation as one hub job (fan-out in the hub), then confirms every
device that accepted through its reported properties, read with GET twin: Azure's
twin queries lag by minutes, GET is exact everywhere.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_progress_artifact, aupdate_progress_artifact
from pydantic import BaseModel, Field

from iot_flows._exceptions import ConfirmationTimeoutError, FirmwareUpdateFailedError, JobFailedError
from iot_flows._time import parse_time
from iot_flows.client import quote_string
from iot_flows.flows._common import JobSummary, confirm_reported, reported_value
from iot_flows.flows._connection import ConnectionRef, resolve_connection
from iot_flows.flows._firmware import installed_version
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
from iot_flows.flows.jobs import MethodJobRequest, precheck, run_method_job
from iot_flows.tasks import query_device_jobs

__all__ = [
    "ConfirmedOperation",
    "FirmwareUpdateRequest",
    "FirmwareUpdateResult",
    "RebootRequest",
    "factory_reset_devices",
    "reboot_devices",
    "update_firmware",
]


class RebootRequest(BaseModel):
    """Which devices to reboot and how long to wait for them to come back."""

    query_condition: str = Field(default="*", description="WHERE body selecting devices.")
    confirm_timeout_seconds: float = Field(default=300, gt=0, description="Wait this long for lastReboot.")
    response_timeout_seconds: int = Field(default=30, ge=5, le=300)
    max_failure_ratio: float = Field(default=0.0, ge=0, le=1)
    poll_interval_seconds: float = Field(default=1.0, gt=0)


class ConfirmedOperation(BaseModel):
    """A method job plus per-device confirmation through reported properties."""

    job: JobSummary
    confirmed: list[str] = Field(default_factory=list)
    not_confirmed: list[str] = Field(default_factory=list)
    duration_seconds: float = 0.0


def _newer_than(started: datetime, path: str):  # type: ignore[no-untyped-def]
    def check(twin: dict[str, Any] | None) -> bool | None:
        value = reported_value(twin, path)
        if not isinstance(value, str):
            return None
        try:
            return True if parse_time(value) >= started else None
        except ValueError:
            return None

    return check


async def _method_then_confirm(
    request: RebootRequest, connection: ConnectionRef, method: str, path: str, what: str, min_devices: int = 0
) -> Any:
    conn = await resolve_connection(connection)
    await precheck(conn, request.query_condition, min_devices, what)
    t0 = time.monotonic()
    started = datetime.now(UTC).replace(microsecond=0)  # reported times may be truncated to seconds
    job = await run_method_job(
        MethodJobRequest(method_name=method, query_condition=request.query_condition,
                         response_timeout_seconds=request.response_timeout_seconds, max_failure_ratio=1.0,
                         poll_interval_seconds=request.poll_interval_seconds),
        connection=conn,
    )  # fmt: skip
    failed = {f.device_id for f in job.failures}
    accepted = await _accepted_devices(conn, job, failed)
    confirmed, _, missing = await confirm_reported(
        conn, accepted, _newer_than(started, path), timeout=request.confirm_timeout_seconds,
        poll_interval=request.poll_interval_seconds,
    )  # fmt: skip
    result = ConfirmedOperation(job=job, confirmed=confirmed, not_confirmed=missing,
                                duration_seconds=round(time.monotonic() - t0, 3))  # fmt: skip
    counts = outcome_line(job.device_count, len(confirmed), len(failed), not_confirmed=len(missing))
    message = await report_outcome(
        what, job.device_count, request.query_condition, min_devices, counts,
        [{"devices": job.device_count, "accepted": len(accepted), "confirmed": len(confirmed),
          "not confirmed": len(missing), "method failed": len(failed)}],
        key=artifact_key(what),
        description=f"{what} of {n_devices(job.device_count)} on {request.query_condition}: {counts} "
                    f"({path} newer than {started.isoformat()})",
        message=f"{what} of {n_devices(job.device_count)}: {counts}",
    )  # fmt: skip
    if missing:
        raise ConfirmationTimeoutError(f"{n_devices(len(missing))} did not confirm {what} in time", summary=result)
    if job.device_count and len(failed) / job.device_count > request.max_failure_ratio:
        raise JobFailedError(f"{len(failed)}/{job.device_count} devices refused {method}", summary=result)
    return completed(result, message)


async def _accepted_devices(conn: Any, job: JobSummary, failed: set[str]) -> list[str]:
    records = await query_device_jobs(conn, job.job_id, status="completed")
    return sorted(r["deviceId"] for r in records if r["deviceId"] not in failed)


@flow(name="Reboot devices and confirm", log_prints=True,
      flow_run_name=run_name(lambda p: f"reboot · {param(p, 'query_condition', '*')}"))  # fmt: skip
async def reboot_devices(
    request: RebootRequest, connection: ConnectionRef = None, query_condition: str | None = None, min_devices: int = 0
) -> ConfirmedOperation:
    """Reboot every selected device and wait until each reports a ``lastReboot`` newer than the call.

    ``query_condition`` overrides the request's; fewer matching devices than ``min_devices``
    fail the run with :class:`TooFewDevicesError` before anything starts.

    Raises:
        ConfirmationTimeoutError: some devices did not report back in time.
        JobFailedError: more devices refused the reboot than allowed.
    """
    request = apply_overrides(request, query_condition=query_condition)
    return await _method_then_confirm(  # type: ignore[no-any-return]
        request, connection, "reboot", "iothubDM.reboot.lastReboot", "reboot", min_devices
    )


@flow(name="Factory reset devices and confirm", log_prints=True,
      flow_run_name=run_name(lambda p: f"factory reset · {param(p, 'query_condition', '*')}"))  # fmt: skip
async def factory_reset_devices(
    request: RebootRequest, connection: ConnectionRef = None, query_condition: str | None = None, min_devices: int = 0
) -> ConfirmedOperation:
    """Factory-reset every selected device (2016 preview job type) and confirm ``lastFactoryReset``."""
    request = apply_overrides(request, query_condition=query_condition)
    return await _method_then_confirm(  # type: ignore[no-any-return]
        request, connection, "factoryReset", "iothubDM.factoryReset.lastFactoryReset", "factory reset", min_devices
    )


# ---- firmware -------------------------------------------------------------------------------
FW_STATUS = "iothubDM.firmwareUpdate.status"
FW_FAILED = ("downloadFailed", "applyFailed")


class FirmwareUpdateRequest(BaseModel):
    """A firmware image for one device or every device a query selects."""

    package_uri: str = Field(description="https URI of the image.")
    version: str = Field(description="Version the image installs, e.g. 2.1.0.")
    device_id: str | None = Field(default=None, description="One device (overrides query_condition).")
    query_condition: str = Field(default="*", description="WHERE body selecting devices.")
    step_timeout_seconds: float = Field(default=600, gt=0, description="Overall wait for applyComplete.")
    max_failure_ratio: float = Field(default=0.0, ge=0, le=1)
    poll_interval_seconds: float = Field(default=1.0, gt=0)


class FirmwareUpdateResult(BaseModel):
    """Result of a firmware update: the job summary, devices now on the version, and the failed step per device."""
    job: JobSummary
    updated: list[str] = Field(default_factory=list)
    failed: dict[str, str] = Field(default_factory=dict, description="device -> failed step")
    timed_out: dict[str, str | None] = Field(default_factory=dict, description="device -> last step seen")
    steps: dict[str, list[str]] = Field(default_factory=dict, description="device -> steps in order")
    duration_seconds: float = 0.0


def _condition(request: FirmwareUpdateRequest) -> str:
    if request.device_id:
        return f"deviceId = {quote_string(request.device_id)}"
    return request.query_condition


@flow(name="Update firmware", log_prints=True,
      flow_run_name=run_name(lambda p: f"firmware {param(p, 'version')} · "
                                       f"{param(p, 'device_id') or param(p, 'query_condition', '*')}"))  # fmt: skip
async def update_firmware(
    request: FirmwareUpdateRequest,
    connection: ConnectionRef = None,
    version: str | None = None,
    package_uri: str | None = None,
    query_condition: str | None = None,
    min_devices: int = 0,
) -> FirmwareUpdateResult:
    """Start ``firmwareUpdate`` on the devices and follow each through its reported steps.

    Each step (``downloading`` -> ``downloadComplete`` -> ``applying`` -> ``applyComplete``)
    is logged as it happens and shown in a progress artifact.

    Raises:
        FirmwareUpdateFailedError: devices reported downloadFailed/applyFailed, or refused the update,
            beyond ``max_failure_ratio``.
        ConfirmationTimeoutError: devices did not finish within ``step_timeout_seconds``.
        TooFewDevicesError: fewer than ``min_devices`` devices matched (checked before starting).

    ``version``, ``package_uri`` and ``query_condition`` override the request's fields.
    """
    logger = get_run_logger()
    request = apply_overrides(request, version=version, package_uri=package_uri, query_condition=query_condition)
    conn = await resolve_connection(connection)
    what = f"firmware {request.version}"
    await precheck(conn, _condition(request), min_devices, what)
    t0 = time.monotonic()
    job = await run_method_job(
        MethodJobRequest(method_name="firmwareUpdate", query_condition=_condition(request),
                         payload={"fwPackageUri": request.package_uri, "version": request.version},
                         max_failure_ratio=1.0, poll_interval_seconds=request.poll_interval_seconds),
        connection=conn,
    )  # fmt: skip
    refused = {f.device_id: f"refused ({f.device_status or f.code})" for f in job.failures}
    accepted = await _accepted_devices(conn, job, set(refused))
    steps: dict[str, list[str]] = {d: [] for d in accepted}
    progress = await acreate_progress_artifact(
        0.0, description=f"firmware {request.version} on {n_devices(len(accepted))}: share that reached applyComplete"
    )

    def check(twin: dict[str, Any] | None) -> bool | None:
        status = reported_value(twin, FW_STATUS)
        if status in FW_FAILED:
            return False
        if status == "applyComplete" and installed_version(twin) == request.version:
            return True
        return None

    async def on_round(twins: dict[str, Any]) -> None:
        for device_id, twin in twins.items():
            status = reported_value(twin, FW_STATUS)
            seen = steps.setdefault(device_id, [])
            if status and (not seen or seen[-1] != status):
                seen.append(status)
                logger.info("%s: %s", device_id, status)
        done = sum(1 for s in steps.values() if s and (s[-1] in FW_FAILED or s[-1] == "applyComplete"))
        await aupdate_progress_artifact(progress, 100.0 * done / max(len(steps), 1))

    updated, failed_ids, missing = await confirm_reported(
        conn, accepted, check, timeout=request.step_timeout_seconds,
        poll_interval=request.poll_interval_seconds, on_round=on_round,
    )  # fmt: skip
    await aupdate_progress_artifact(progress, 100.0)
    failed = {**refused, **{d: (steps.get(d) or ["?"])[-1] for d in failed_ids}}
    result = FirmwareUpdateResult(
        job=job, updated=updated, failed=failed,
        timed_out={d: steps[d][-1] if steps.get(d) else None for d in missing},
        steps=steps, duration_seconds=round(time.monotonic() - t0, 3),
    )  # fmt: skip
    counts = outcome_line(job.device_count, len(updated), len(failed), timed_out=len(missing))
    message = await report_outcome(
        what, job.device_count, _condition(request), min_devices, counts,
        [{"device": d, "steps": " → ".join(s), "result": "updated" if d in updated else failed.get(d, "timed out")}
         for d, s in sorted(steps.items())][:1000] or [{"device": "-", "steps": "-", "result": "no device accepted"}],
        key=artifact_key("firmware", request.version),
        description=f"Firmware {request.version} on {n_devices(job.device_count)} ({_condition(request)}): {counts}",
        message=f"{what} on {n_devices(job.device_count)}: {counts}",
    )  # fmt: skip
    total = job.device_count or 1
    if len(failed) / total > request.max_failure_ratio:
        raise FirmwareUpdateFailedError(f"{len(failed)}/{job.device_count} devices failed the update", summary=result)
    if missing:
        raise ConfirmationTimeoutError(f"{n_devices(len(missing))} did not finish the update in time", summary=result)
    return completed(result, message)  # type: ignore[return-value]
