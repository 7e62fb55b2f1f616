"""Each device's state before the rollout touches it, kept in its twin: ``tags.rollouts.<id>.previous``.

Recorded before a wave starts, by twin-update jobs (``scheduleUpdateTwin`` with tags,
docs/iothub-reference.md §3.5) over the wave's devices grouped by what they run now, and only where the tag
is not there yet (a resumed run never overwrites it with the new version). A rollback,
even by a later run after a crash, reads it back from the twins.

Firmware mechanisms record ``{"version", "package_uri"}``; a template records the values
its success predicate reads (``{"values": {path: value}}``, as JSON text). A merge-patch
drops nulls, so an unknown value is kept as ``""``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from iot_flows.blocks import HubConnection
from iot_flows.client import device_id_conditions
from iot_flows.flows._common import new_job_id, reported_value
from iot_flows.flows._firmware import installed_version
from iot_flows.flows.rollout._lease import tag_key
from iot_flows.flows.rollout._models import RolloutRequest
from iot_flows.flows.rollout._wave import job_prefix
from iot_flows.tasks import RETRY

__all__ = ["previous_from_twin", "previous_job_prefix", "previous_state", "record_previous"]

_TERMINAL = ("completed", "failed", "cancelled")


def previous_job_prefix(request: RolloutRequest) -> str:
    """``rollout-<id>-prev-``: the jobs that record previous states (not updates)."""
    return f"{job_prefix(request)}prev-"


def _encode(state: dict[str, Any]) -> dict[str, Any]:
    """As a tag: a merge-patch drops nulls, so None is ``""`` and template values are JSON text."""
    return {k: "" if v is None else json.dumps(v, sort_keys=True) if k == "values" else v for k, v in state.items()}


def _decode(tag: dict[str, Any]) -> dict[str, Any]:
    return {k: None if v == "" else json.loads(v) if k == "values" and isinstance(v, str) else v for k, v in tag.items()}


def previous_from_twin(twin: dict[str, Any] | None, request: RolloutRequest) -> dict[str, Any] | None:
    """The recorded ``tags.rollouts.<id>.previous`` of ``twin`` (None: not recorded)."""
    tags = (twin or {}).get("tags") or {}
    recorded = ((tags.get("rollouts") or {}).get(tag_key(request.key)) or {}).get("previous")
    return _decode(recorded) if isinstance(recorded, dict) else None


def previous_state(twin: dict[str, Any] | None, request: RolloutRequest) -> dict[str, Any]:
    """What the device runs now, as the tag records it (recorded value first)."""
    recorded = previous_from_twin(twin, request)
    if recorded is not None:
        return recorded
    if request.mechanism == "template" and request.template is not None:
        return {"values": {path: reported_value(twin, path) for path in request.template.success}}
    version = installed_version(twin)
    uri = request.rollback_package_uri.format(version=version) if request.rollback_package_uri and version else None
    return {"version": version, "package_uri": uri}


@task(name="record_previous", cache_policy=NO_CACHE, **RETRY)
async def record_previous(connection: HubConnection, request: RolloutRequest, previous: dict[str, dict[str, Any]],
                          poll_seconds: float = 0.2) -> int:  # fmt: skip
    """Write ``previous`` (device id -> its state) as ``tags.rollouts.<id>.previous`` where the
    tag is missing, one twin-update job per state and id-list chunk; waits for the jobs.

    Returns the number of jobs run. Raises what the job calls raise.
    """
    key = tag_key(request.key)
    groups: dict[str, list[str]] = {}
    for device_id, state in previous.items():
        groups.setdefault(json.dumps(_encode(state), sort_keys=True), []).append(device_id)
    jobs = 0
    async with connection.get_client() as hub:
        for state_json, ids in sorted(groups.items()):
            for _, cond in device_id_conditions(sorted(ids)):
                job_id = new_job_id(previous_job_prefix(request))
                body = {"type": "scheduleUpdateTwin", "maxExecutionTimeInSeconds": 300,
                        "queryCondition": f"({cond}) AND NOT IS_DEFINED(tags.rollouts.{key}.previous)",
                        "updateTwin": {"etag": "*", "tags": {"rollouts": {key: {"previous": json.loads(state_json)}}}}}  # fmt: skip
                await hub.create_job(job_id, body)
                jobs += 1
                while (await hub.get_job(job_id)).get("status") not in _TERMINAL:
                    await asyncio.sleep(poll_seconds)
    return jobs
