"""Staged firmware rollout: waves, gates, abort thresholds, retries, maintenance windows.

The flagship flow (design.md "Firmware rollout, end to end"):

1. resolve targets with a twin query, minus devices already on the target version;
2. split them into waves by cumulative percentage (e.g. 1 % canary, 10 %, 50 %, 100 %),
   in a stable order (device id), so a re-run picks up exactly where it stopped;
3. per wave: wait for the maintenance window, start ``firmwareUpdate`` as one hub job
   over the wave (a short ``deviceId`` range condition: no 8 KB ``IN`` lists), follow each
   device's reported steps until ``applyComplete``/failure/timeout (GET twin, exact on
   Azure too);
4. retry failed and timed-out devices with exponential backoff and jitter;
5. gate: continue only when the wave's success ratio meets ``min_success_ratio``; abort
   when its failure ratio passes ``abort_failure_ratio``; optionally pause for approval
   after the canary (Prefect ``pause_flow_run``; resume from the UI);
6. progress in the Prefect UI: a progress artifact, a per-wave table, and an
   ``iot-flows.rollout.wave-completed`` event per wave.

Cancelling the flow run cancels the hub job it is following.
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger, pause_flow_run
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.events import emit_event
from pydantic import BaseModel, Field, field_validator, model_validator

from iot_flows._exceptions import OperationFailedError
from iot_flows._window import MaintenanceWindow
from iot_flows.blocks import HubConnection
from iot_flows.client import device_id_conditions, quote_string
from iot_flows.flows._common import confirm_reported, follow_job, new_job_id, reported_value
from iot_flows.flows._connection import ConnectionRef, resolve_connection
from iot_flows.flows._firmware import installed_version, not_on_version_condition
from iot_flows.tasks import cancel_job, create_method_job, query_device_jobs, query_twins

__all__ = ["RolloutAbortedError", "RolloutRequest", "RolloutResult", "WaveResult", "roll_out_firmware"]

FW_STATUS = "iothubDM.firmwareUpdate.status"
FW_FAILED = ("downloadFailed", "applyFailed")


class RolloutAbortedError(OperationFailedError):
    """Raised when a wave fails its gate or passes the abort threshold."""


class Window(BaseModel):
    """A maintenance window, in the same JSON form devices honour (see ``iot_flows._window``)."""

    start: str = Field(description="HH:MM, local to timezone")
    end: str = Field(description="HH:MM; before start = crosses midnight")
    timezone: str = Field(default="UTC", description="UTC, an IANA name or an offset like +02:00")
    days: list[str] | None = Field(default=None, description="Only on these days, e.g. ['Sat', 'Sun']")

    @model_validator(mode="after")
    def _valid(self) -> "Window":
        self.parsed()  # a ValueError here becomes a parameter validation error
        return self

    def parsed(self) -> MaintenanceWindow:
        return MaintenanceWindow.parse(self.model_dump(exclude_none=True))

    def seconds_until_open(self, now: datetime | None = None) -> float:
        return self.parsed().seconds_until_open(now)


class RolloutRequest(BaseModel):
    """What to roll out, to whom, and the rules between waves."""

    package_uri: str = Field(description="https URI of the image.")
    version: str = Field(description="Version the image installs.")
    target_condition: str = Field(default="*", description="WHERE body selecting the fleet.")
    waves: list[float] = Field(default_factory=lambda: [1.0, 10.0, 50.0, 100.0], description="Cumulative percentages.")
    min_success_ratio: float = Field(default=0.95, ge=0, le=1, description="Gate: share of a wave that must succeed.")
    abort_failure_ratio: float = Field(default=0.2, ge=0, le=1, description="Abort when a wave's failures pass this.")
    device_timeout_seconds: float = Field(default=900, gt=0, description="Per attempt, until applyComplete.")
    retries: int = Field(default=1, ge=0, le=10, description="Extra attempts for failed/timed-out devices.")
    retry_backoff_seconds: float = Field(default=30, ge=0, description="First retry delay; doubles, +/-50 % jitter.")
    maintenance_window: Window | None = Field(default=None, description="Start waves only inside this window.")
    approval_after_canary: bool = Field(default=False, description="Pause for approval after the first wave.")
    approval_timeout_seconds: int = Field(default=86400, gt=0)
    poll_interval_seconds: float = Field(default=2.0, gt=0)

    @field_validator("waves")
    @classmethod
    def _increasing(cls, waves: list[float]) -> list[float]:
        if not waves or any(not 0 < w <= 100 for w in waves) or waves != sorted(waves) or waves[-1] != 100:
            raise ValueError("waves must be increasing cumulative percentages ending at 100")
        return waves


class WaveResult(BaseModel):
    index: int
    devices: int
    updated: int = 0
    failed: list[str] = Field(default_factory=list)
    timed_out: list[str] = Field(default_factory=list)
    attempts: int = 0
    success_ratio: float = 0.0
    seconds: float = 0.0


class RolloutResult(BaseModel):
    version: str
    status: str = Field(description="completed | aborted")
    targets: int = 0
    already_current: int = 0
    waves: list[WaveResult] = Field(default_factory=list)
    reason: str | None = None


def split_waves(device_ids: list[str], percentages: list[float]) -> list[list[str]]:
    """Stable, non-empty waves from cumulative percentages (the canary gets at least one device)."""
    waves: list[list[str]] = []
    done = 0
    for pct in percentages:
        upto = max(done + 1, round(len(device_ids) * pct / 100)) if done < len(device_ids) else done
        upto = min(upto, len(device_ids))
        if upto > done:
            waves.append(device_ids[done:upto])
            done = upto
    return waves


def wave_condition(target: str, ids: list[str], version: str) -> str:
    """A short condition for a wave: its id range within the target, minus current devices."""
    base = "" if target.strip() == "*" else f"({target}) AND "
    return (f"{base}deviceId >= {quote_string(ids[0])} AND deviceId <= {quote_string(ids[-1])} AND "
            f"({not_on_version_condition(version)})")  # fmt: skip


async def _attempt(conn: HubConnection, request: RolloutRequest, condition: str, ids: set[str], label: str):  # type: ignore[no-untyped-def]
    """One firmwareUpdate job over ``condition``; follow ``ids`` to a verdict."""
    job_id = new_job_id(f"rollout-{label}")
    await create_method_job(conn, job_id, "firmwareUpdate", condition,
                            {"fwPackageUri": request.package_uri, "version": request.version})  # fmt: skip
    try:
        await follow_job(conn, job_id, poll_interval=min(request.poll_interval_seconds, 1.0), title=f"rollout {label}")
    except asyncio.CancelledError:
        await cancel_job(conn, job_id)
        raise
    accepted = {r["deviceId"] for r in await query_device_jobs(conn, job_id, status="completed")}

    def check(twin: dict[str, Any] | None) -> bool | None:
        if installed_version(twin) == request.version and reported_value(twin, FW_STATUS) in ("applyComplete", None):
            return True
        return False if reported_value(twin, FW_STATUS) in FW_FAILED else None

    updated, failed, timed_out = await confirm_reported(
        conn, sorted(accepted & ids), check, timeout=request.device_timeout_seconds,
        poll_interval=request.poll_interval_seconds,
    )  # fmt: skip
    refused = sorted(ids - accepted)
    return set(updated), set(failed) | set(refused), set(timed_out)


@flow(name="Roll out firmware in waves", log_prints=True)
async def roll_out_firmware(request: RolloutRequest, connection: ConnectionRef = None) -> RolloutResult:
    """Roll firmware out in waves with gates, abort thresholds, retries and maintenance windows.

    Raises:
        RolloutAbortedError: a wave missed its gate or passed the abort threshold;
            ``summary`` is the :class:`RolloutResult` so far.
    """
    logger = get_run_logger()
    conn = await resolve_connection(connection)
    where = "" if request.target_condition.strip() == "*" else f" WHERE {request.target_condition}"
    rows = await query_twins(conn, f"SELECT deviceId, properties.reported FROM devices{where}")
    current = {r["deviceId"] for r in rows if installed_version({"properties": {"reported": r.get("reported")}}) == request.version}
    targets = sorted(r["deviceId"] for r in rows if r["deviceId"] not in current)
    result = RolloutResult(version=request.version, status="completed", targets=len(targets), already_current=len(current))
    waves = split_waves(targets, request.waves)
    logger.info("rollout %s: %d targets (%d already current) in %d waves", request.version, len(targets), len(current), len(waves))
    progress = await create_progress_artifact(0.0, description=f"Firmware {request.version} rollout")
    finished = 0
    for index, wave in enumerate(waves):
        if request.maintenance_window is not None:
            delay = request.maintenance_window.seconds_until_open()
            if delay > 0:
                logger.info("wave %d waits %.0f s for the maintenance window", index, delay)
                await asyncio.sleep(delay)
        t0 = time.monotonic()
        outcome = WaveResult(index=index, devices=len(wave))
        remaining, updated = set(wave), set()
        failed: set[str] = set()
        timed_out: set[str] = set()
        condition = wave_condition(request.target_condition, wave, request.version)
        for attempt in range(request.retries + 1):
            parts = [(sorted(remaining), condition)]
            if attempt:
                delay = request.retry_backoff_seconds * 2 ** (attempt - 1) * random.uniform(0.5, 1.5)
                logger.info("wave %d: retrying %d devices in %.1f s", index, len(remaining), delay)
                await asyncio.sleep(delay)
                parts = device_id_conditions(sorted(remaining))  # one job per part: each under 8 KB
            ok, failed, timed_out = set(), set(), set()
            for part, (ids, cond) in enumerate(parts):
                o, f, t = await _attempt(conn, request, cond, set(ids), f"w{index}a{attempt}p{part}")
                ok, failed, timed_out = ok | o, failed | f, timed_out | t
            updated |= ok
            remaining -= ok
            outcome.attempts = attempt + 1
            if not remaining:
                break
        outcome.updated, outcome.failed, outcome.timed_out = len(updated), sorted(failed), sorted(timed_out)
        outcome.success_ratio = round(len(updated) / len(wave), 4)
        outcome.seconds = round(time.monotonic() - t0, 2)
        result.waves.append(outcome)
        finished += len(wave)
        await update_progress_artifact(progress, 100.0 * finished / max(len(targets), 1))
        emit_event(
            event="iot-flows.rollout.wave-completed",
            resource={"prefect.resource.id": f"iot-flows.rollout.{request.version}.wave.{index}"},
            payload=outcome.model_dump(),
        )
        logger.info("wave %d: %d/%d updated (%.0f %%)", index, len(updated), len(wave), 100 * outcome.success_ratio)
        failure_ratio = (len(failed) + len(timed_out)) / len(wave)
        if failure_ratio > request.abort_failure_ratio or outcome.success_ratio < request.min_success_ratio:
            result.status = "aborted"
            result.reason = (f"wave {index}: success {outcome.success_ratio:.0%} (gate {request.min_success_ratio:.0%}), "
                             f"failures {failure_ratio:.0%} (abort above {request.abort_failure_ratio:.0%})")  # fmt: skip
            break
        if index == 0 and request.approval_after_canary and len(waves) > 1:
            logger.info("canary done: waiting for approval (resume the flow run to continue)")
            await pause_flow_run(timeout=request.approval_timeout_seconds)
    await create_table_artifact(
        [{"wave": w.index, "devices": w.devices, "updated": w.updated, "failed": len(w.failed),
          "timed out": len(w.timed_out), "attempts": w.attempts, "success": f"{w.success_ratio:.0%}", "seconds": w.seconds}
         for w in result.waves] or [{"wave": "-", "devices": 0}],
        description=f"Firmware {request.version} rollout: {result.status}",
    )  # fmt: skip
    if result.status == "aborted":
        raise RolloutAbortedError(f"rollout of {request.version} aborted: {result.reason}", summary=result)
    return result
