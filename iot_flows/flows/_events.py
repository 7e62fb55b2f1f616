"""Hub changes as Prefect events, so automations can start the next wave or a follow-up flow.

Event names (resource ids in parentheses):

* ``iot-flows.job.completed`` / ``.failed`` / ``.cancelled`` (``iot-flows.job.<jobId>``)
* ``iot-flows.twin.reported-changed`` / ``.desired-changed`` / ``.tags-changed``
  (``iot-flows.device.<deviceId>``)
* ``iot-flows.device.connected`` / ``.disconnected`` (``iot-flows.device.<deviceId>``)

Every event names the hub as a related resource (role ``hub``); job events name the
job's devices' query, twin events the device.
"""

from __future__ import annotations

from typing import Any

from prefect.events import emit_event

from iot_flows.jobs import TERMINAL_JOB_STATES

__all__ = ["emit_change_event", "emit_job_event"]

_TWIN_EVENTS = {
    "twin.reported": "iot-flows.twin.reported-changed",
    "twin.desired": "iot-flows.twin.desired-changed",
    "twin.tags": "iot-flows.twin.tags-changed",
    "device.connected": "iot-flows.device.connected",
    "device.disconnected": "iot-flows.device.disconnected",
}


def _hub(host: str | None) -> dict[str, str]:
    return {"prefect.resource.id": f"iot-flows.hub.{host or 'default'}", "prefect.resource.role": "hub"}


def emit_job_event(job: dict[str, Any], hub_host: str | None = None) -> Any:
    """Emit ``iot-flows.job.<status>`` for a terminal job document."""
    return emit_event(
        event=f"iot-flows.job.{job['status']}",
        resource={"prefect.resource.id": f"iot-flows.job.{job['jobId']}", "prefect.resource.name": job["jobId"],
                  "iot-flows.job.type": job.get("type", "")},  # fmt: skip
        related=[_hub(hub_host)],
        payload={
            "jobId": job["jobId"],
            "type": job.get("type"),
            "status": job["status"],
            "queryCondition": job.get("queryCondition"),
            "deviceJobStatistics": job.get("deviceJobStatistics") or {},
        },
    )


def emit_change_event(change: dict[str, Any], hub_host: str | None = None) -> Any:
    """Emit the Prefect event for one hub change-stream entry (None when it maps to none)."""
    kind = change.get("kind", "")
    if kind.startswith("job."):
        job = change.get("job") or {}
        if job.get("status") in TERMINAL_JOB_STATES:
            return emit_job_event(job, hub_host)
        return None
    name = _TWIN_EVENTS.get(kind)
    if name is None:
        return None
    device_id = change["deviceId"]
    return emit_event(
        event=name,
        resource={"prefect.resource.id": f"iot-flows.device.{device_id}", "prefect.resource.name": device_id},
        related=[_hub(hub_host)],
        payload={k: change.get(k) for k in ("patch", "version", "sequence", "time") if change.get(k) is not None},
    )
