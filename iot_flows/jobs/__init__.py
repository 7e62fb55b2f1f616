"""The hub's jobs engine: ``/jobs/v2`` scheduled method and twin-update jobs over a query."""

from typing import TYPE_CHECKING, Any

from iot_flows.jobs._states import (
    ACTIVE_JOB_STATES,
    TERMINAL_DEVICE_STATES,
    TERMINAL_JOB_STATES,
    DeviceJobStatus,
    JobStatus,
    JobType,
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
]

if TYPE_CHECKING:
    from iot_flows.jobs._engine import JobEngine, JobSettings


def __getattr__(name: str) -> Any:
    """``JobEngine``/``JobSettings`` on first use. The engine uses the hub's services and the
    hub imports the engine, so the hub is loaded first, as ``iot_flows`` used to do
    eagerly (remove once the jobs -> hub cycle is gone)."""
    if name not in ("JobEngine", "JobSettings"):
        raise AttributeError(f"module 'iot_flows.jobs' has no attribute {name!r}")
    import iot_flows.hub  # noqa: F401
    from iot_flows.jobs import _engine

    value = getattr(_engine, name)
    globals()[name] = value
    return value
