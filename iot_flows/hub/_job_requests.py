"""Validation of ``PUT /jobs/v2/{id}`` bodies (``JobRequest``, docs/iothub-reference.md §3.5)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from iot_flows._exceptions import BadRequestError
from iot_flows._time import format_time, parse_time
from iot_flows.hub._methods import MethodCall, parse_method_call
from iot_flows.jobs import JobType

__all__ = ["JobRequest", "format_time", "parse_job_request", "parse_time"]

_JOB_ID = re.compile(r"^[A-Za-z0-9-]{1,64}$")
#: Upper bound of ``maxExecutionTimeInSeconds`` (7 days); Azure does not document one.
MAX_EXECUTION_SECONDS = 7 * 24 * 3600
DEFAULT_EXECUTION_SECONDS = 3600


@dataclass(frozen=True, slots=True)
class JobRequest:
    """A validated job request."""

    job_id: str
    type: JobType
    query_condition: str
    start_time: datetime
    max_execution_seconds: int
    method: MethodCall | None
    update_twin: dict[str, Any] | None
    #: iot-flows extension: keep offline devices pending until they connect (within the
    #: job's max execution time) instead of failing them after connectTimeoutInSeconds.
    wait_for_offline_devices: bool
    raw: dict[str, Any]


def parse_job_request(job_id: str, body: Any, *, now: datetime) -> JobRequest:
    """Validate a JobRequest; raise 400 :class:`BadRequestError` naming the problem."""
    if not _JOB_ID.match(job_id):
        raise BadRequestError("jobId must be 1-64 characters of US-ASCII letters, digits or '-'.")
    if not isinstance(body, dict):
        raise BadRequestError("The job body must be a JSON object.")
    if body.get("jobId") not in (None, job_id):
        raise BadRequestError("jobId in the body does not match the URL.")
    try:
        job_type = JobType(body.get("type"))
    except ValueError:
        raise BadRequestError(
            f"Unsupported job type {body.get('type')!r}: use 'scheduleDeviceMethod' or 'scheduleUpdateTwin'."
        ) from None
    condition = body.get("queryCondition")
    if not isinstance(condition, str) or not condition.strip():
        raise BadRequestError("queryCondition is required (a WHERE body, or '*' for all devices).")
    if len(condition) > 8192:
        raise BadRequestError("queryCondition is longer than 8192 characters.")
    start_raw = body.get("startTime")
    try:
        start = parse_time(start_raw) if start_raw else now
    except (TypeError, ValueError):
        raise BadRequestError(f"startTime {start_raw!r} is not an ISO 8601 time.") from None
    max_exec = body.get("maxExecutionTimeInSeconds", DEFAULT_EXECUTION_SECONDS)
    if isinstance(max_exec, bool) or not isinstance(max_exec, int) or not 1 <= max_exec <= MAX_EXECUTION_SECONDS:
        raise BadRequestError(f"maxExecutionTimeInSeconds must be an integer within [1; {MAX_EXECUTION_SECONDS}].")
    method = update = None
    if job_type is JobType.SCHEDULE_DEVICE_METHOD:
        method = parse_method_call(body.get("cloudToDeviceMethod"))
    else:
        update = body.get("updateTwin")
        if not isinstance(update, dict):
            raise BadRequestError("A scheduleUpdateTwin job needs an 'updateTwin' object.")
        if "etag" not in update:
            raise BadRequestError("updateTwin must carry an etag (use \"*\" to match any twin).")
        props = update.get("properties") or {}
        if not isinstance(props, dict) or (props.get("reported") not in (None, {})):
            raise BadRequestError("updateTwin may set tags and desired properties only.")
        if "desired" not in props and "tags" not in update:
            raise BadRequestError("updateTwin must set tags or properties.desired.")
    return JobRequest(
        job_id=job_id,
        type=job_type,
        query_condition=condition.strip(),
        start_time=start,
        max_execution_seconds=max_exec,
        method=method,
        update_twin=update,
        wait_for_offline_devices=bool(body.get("waitForOfflineDevices", False)),
        raw=body,
    )
