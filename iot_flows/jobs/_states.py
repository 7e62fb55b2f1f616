"""Job and device-job states, their groupings, and the one transition table.

Spelling follows IoT Hub exactly (docs/iothub-reference.md §3.5-3.6, §8 #9): the job-level
value is ``cancelled`` (two l), the device-level value ``canceled`` (one l).
"""

from __future__ import annotations

from enum import Enum

from iot_flows._exceptions import BadRequestError, InvalidJobTransitionError

__all__ = [
    "ACTIVE_JOB_STATES",
    "JOB_STATUS_SYNONYMS",
    "TERMINAL_DEVICE_STATES",
    "TERMINAL_JOB_STATES",
    "DeviceJobStatus",
    "JobStatus",
    "JobType",
    "check_transition",
    "created_status",
    "parse_job_status",
    "parse_job_type",
]


class JobType(str, Enum):
    """The scheduled job types ``/jobs/v2`` accepts."""

    SCHEDULE_DEVICE_METHOD = "scheduleDeviceMethod"  #: invoke a direct method on each device
    SCHEDULE_UPDATE_TWIN = "scheduleUpdateTwin"  #: patch tags/desired on each device


class JobStatus(str, Enum):
    """A job's lifecycle."""

    QUEUED = "queued"  #: accepted, starts as soon as a slot is free
    SCHEDULED = "scheduled"  #: waiting for its startTime
    RUNNING = "running"  #: fanning out to devices
    COMPLETED = "completed"  #: every device record is terminal
    FAILED = "failed"  #: ended abnormally (e.g. max execution time exceeded)
    CANCELLED = "cancelled"  #: cancelled by the service


class DeviceJobStatus(str, Enum):
    """One device's record within a job."""

    PENDING = "pending"  #: not reached yet
    SCHEDULED = "scheduled"  #: job not started yet
    RUNNING = "running"  #: request sent, outcome not recorded yet
    COMPLETED = "completed"  #: the operation succeeded on this device
    FAILED = "failed"  #: the operation failed; see ``error``
    CANCELED = "canceled"  #: the job was cancelled before this device was reached


ACTIVE_JOB_STATES = frozenset({JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.RUNNING})
TERMINAL_JOB_STATES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
TERMINAL_DEVICE_STATES = frozenset({DeviceJobStatus.COMPLETED, DeviceJobStatus.FAILED, DeviceJobStatus.CANCELED})

_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.SCHEDULED: frozenset({JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.RUNNING: frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.COMPLETED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


def check_transition(current: JobStatus, target: JobStatus) -> None:
    """Raise :class:`InvalidJobTransitionError` unless ``current -> target`` is allowed."""
    if target not in _TRANSITIONS[current]:
        raise InvalidJobTransitionError(f"Job cannot move from '{current.value}' to '{target.value}'.")


#: Other spellings of job statuses in Azure's SDKs and docs (docs/iothub-reference.md §3.5): the swagger's
#: ``enqueued`` ("queued is a synonym for enqueued") and the docs' ``canceled``.
JOB_STATUS_SYNONYMS: dict[str, JobStatus] = {
    "enqueued": JobStatus.QUEUED,
    "canceled": JobStatus.CANCELLED,
}


def created_status(status: JobStatus) -> str:
    """The status a ``PUT /jobs/v2/{id}`` answer shows: ``queued`` for any job not started yet.

    The Node service SDK's job tests read ``queued`` from the PUT response of a job
    scheduled an hour ahead (docs/iothub-reference.md §9.6); GET and query then say
    ``scheduled`` until its ``startTime`` (D-JOBS).
    """
    return JobStatus.QUEUED.value if status in (JobStatus.QUEUED, JobStatus.SCHEDULED) else status.value


def parse_job_status(value: str) -> JobStatus:
    """A ``jobStatus`` query value (any case, synonyms allowed); 400 for anything else."""
    text = value.strip().lower()
    try:
        return JOB_STATUS_SYNONYMS.get(text) or JobStatus(text)
    except ValueError:
        allowed = ", ".join([s.value for s in JobStatus] + list(JOB_STATUS_SYNONYMS))
        raise BadRequestError(f"Unknown jobStatus '{value}'; use one of {allowed}.") from None


def parse_job_type(value: str) -> JobType:
    """A ``jobType`` query value (any case); 400 for anything else."""
    for job_type in JobType:
        if job_type.value.lower() == value.strip().lower():
            return job_type
    raise BadRequestError(f"Unknown jobType '{value}'; use scheduleDeviceMethod or scheduleUpdateTwin.")
