"""The hub's jobs engine: ``/jobs/v2`` scheduled method and twin-update jobs over a query."""

from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from iot_flows.jobs._engine import JobEngine, JobSettings


def __getattr__(name: str) -> Any:
    """``JobEngine``/``JobSettings`` on first use (see the import of the hub below)."""
    if name not in ("JobEngine", "JobSettings"):
        raise AttributeError(f"module 'iot_flows.jobs' has no attribute {name!r}")
    from iot_flows.jobs import _engine

    value = getattr(_engine, name)
    globals()[name] = value
    return value


# The engine uses the hub's services and the hub imports the engine (through the
# ``__getattr__`` above, already defined when the hub asks): load the hub last, so that
# any jobs module can be imported on its own. Remove once the jobs -> hub cycle is gone.
import iot_flows.hub  # noqa: E402, F401
