"""The vocabulary of IoT Hub jobs: job and device-job states, job types, their wire spellings.

The engine that runs jobs lives in the hub (``iot_flows.hub.JobEngine``), as in Azure,
where jobs run in the hub (docs/iothub-reference.md §3.5-3.6); this package depends on nothing else of
the project, so flows, the client and the hub all read the same states.
"""

from iot_flows._settings import JobSettings
from iot_flows.jobs._states import (
    ACTIVE_JOB_STATES,
    JOB_STATUS_SYNONYMS,
    TERMINAL_DEVICE_STATES,
    TERMINAL_JOB_STATES,
    DeviceJobStatus,
    JobStatus,
    JobType,
    check_transition,
    created_status,
    parse_job_status,
    parse_job_type,
)

__all__ = [
    "ACTIVE_JOB_STATES",
    "JOB_STATUS_SYNONYMS",
    "TERMINAL_DEVICE_STATES",
    "TERMINAL_JOB_STATES",
    "DeviceJobStatus",
    "JobSettings",
    "JobStatus",
    "JobType",
    "check_transition",
    "created_status",
    "parse_job_status",
    "parse_job_type",
]
