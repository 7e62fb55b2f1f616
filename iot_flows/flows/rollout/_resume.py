"""Resume by rollout id: take the lease, stop what a dead run left running, adopt its devices.

Everything a run needs to continue lives in the hub: the devices already current are
skipped by the plan (their twins), and the devices a previous run of the id had already
sent the update to are found in its hub jobs (``rollout-<id>-...``): their
``devices.jobs`` records ``completed`` mean the device accepted the update, so this run
follows their twins instead of sending it again (nobody is updated twice). Jobs of the
dead run still active are cancelled first, so no new device gets its update from them.
"""

from __future__ import annotations

import contextlib
from typing import Any

from prefect import get_client, get_run_logger
from prefect.context import FlowRunContext
from prefect.states import Crashed

from iot_flows.blocks import HubConnection
from iot_flows.client import quote_string
from iot_flows.flows.rollout._lease import RolloutLease
from iot_flows.flows.rollout._models import RolloutRequest
from iot_flows.flows.rollout._poll import PAGE_SIZE
from iot_flows.flows.rollout._previous import previous_job_prefix
from iot_flows.flows.rollout._wave import job_prefix

__all__ = ["adopt_in_flight", "take_lease"]

_ACTIVE = ("running", "queued", "scheduled")


async def take_lease(conn: HubConnection, request: RolloutRequest, anchor: str) -> RolloutLease:
    """Acquire the rollout's lease on ``anchor`` (see :mod:`._lease`); a stale holder's Prefect
    run, when it names one, is marked Crashed with the reason.

    Raises:
        RolloutInProgressError: a live run of the same id holds the lease.
    """
    context = FlowRunContext.get()
    run = context.flow_run if context else None
    lease = RolloutLease(conn, request.key, anchor, request.lease_seconds,
                         str(run.id) if run else None, run.name if run else None)  # fmt: skip
    await lease.acquire()
    if lease.took_over:
        logger = get_run_logger()
        logger.warning("rollout %s: taking over from a stale run (%s); continuing where it stopped", request.key, lease.took_over)
        stale = lease.stale_run_id
        if stale and (run is None or stale != str(run.id)):
            with contextlib.suppress(Exception):  # the stale run may be gone from the API: nothing to mark
                async with get_client() as client:
                    await client.set_flow_run_state(stale, Crashed(message=f"rollout {request.key} taken over: {lease.took_over}"),
                                                    force=True)  # fmt: skip
    return lease


async def _records(hub: Any, job_id: str) -> list[dict[str, Any]]:
    where = f"devices.jobs.jobId = {quote_string(job_id)} AND devices.jobs.status = 'completed'"
    out: list[dict[str, Any]] = []
    continuation: str | None = None
    while True:
        page = await hub.query_page(f"SELECT * FROM devices.jobs WHERE {where}", continuation=continuation, page_size=PAGE_SIZE)
        out.extend(page.items)
        continuation = page.continuation
        if not continuation:
            return out


async def adopt_in_flight(conn: HubConnection, request: RolloutRequest, todo: set[str]) -> dict[str, str]:
    """Devices of ``todo`` an earlier run of this rollout id already sent the update to.

    Cancels that run's jobs still active (it is dead: this run holds the lease). Returns
    ``{device id: the accepting record's startTimeUtc}`` (its latest job), for the wave
    runner to follow without a new job.
    """
    prefix = job_prefix(request)
    logger = get_run_logger()
    adopted: dict[str, str] = {}
    async with conn.get_client() as hub:
        jobs = [j for j in await hub.query_jobs() if str(j.get("jobId", "")).startswith(prefix)
                and not str(j.get("jobId", "")).startswith(previous_job_prefix(request))]  # fmt: skip
        for job in jobs:
            if job.get("status") in _ACTIVE:
                logger.warning("rollout %s: cancelling hub job %s left running by the stopped run", request.key, job["jobId"])
                with contextlib.suppress(Exception):  # it may have ended meanwhile
                    await hub.cancel_job(job["jobId"])
        for job in jobs:
            for record in await _records(hub, str(job["jobId"])):
                device_id, started = str(record.get("deviceId")), str(record.get("startTimeUtc") or "")
                if device_id in todo and started >= adopted.get(device_id, ""):
                    adopted[device_id] = started
    if adopted:
        logger.info("rollout %s: %d devices already got the update from an earlier run: following them, not sending it again",
                    request.key, len(adopted))  # fmt: skip
    return adopted
