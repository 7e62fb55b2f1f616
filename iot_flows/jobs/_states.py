"""Job and device-job states, their groupings, and the one transition table.

Spelling follows IoT Hub exactly (reference §3.5-3.6, "ten things" #9): the job-level
value is ``cancelled`` (two l), the device-level value ``canceled`` (one l).
"""

from __future__ import annotations

from enum import Enum

from iot_flows._exceptions import InvalidJobTransitionError

__all__ = [
    "ACTIVE_JOB_STATES",
    "TERMINAL_DEVICE_STATES",
    "TERMINAL_JOB_STATES",
    "DeviceJobStatus",
    "JobStatus",
    "JobType",
    "check_transition",
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
