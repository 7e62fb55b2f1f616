"""The hub's jobs engine: ``/jobs/v2`` scheduled method and twin-update jobs over a query."""

from iot_flows.jobs._engine import JobEngine, JobSettings
from iot_flows.jobs._states import (
    ACTIVE_JOB_STATES,
    TERMINAL_DEVICE_STATES,
    TERMINAL_JOB_STATES,
    DeviceJobStatus,
    JobStatus,
    JobType,
    created_status,
    parse_job_status,
    parse_job_type,
)

__all__ = [
    "ACTIVE_JOB_STATES",
    "TERMINAL_DEVICE_STATES",
    "TERMINAL_JOB_STATES",
    "DeviceJobStatus",
    "JobEngine",
    "JobSettings",
    "JobStatus",
    "JobType",
    "created_status",
    "parse_job_status",
    "parse_job_type",
]
