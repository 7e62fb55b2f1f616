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
   after the canary (Prefect ``pause_flow_run`` with a summary in the resume form's
   description; resume from the UI);
6. progress in the Prefect UI: the per-wave table ``rollout-<version>`` (created before the
   canary, a new version after every wave), a progress artifact, the run renamed
   ``firmware 2.1.0 · wave 2/4``, and an ``iot-flows.rollout.wave-completed`` event per wave.

Waiting for the maintenance window does not hold a worker: a run started from a
deployment puts itself back to Scheduled (state ``AwaitingWindow``) at the window's
opening and exits; the worker starts it again then, and the run skips the devices (and
waves) already on the version. Outside a deployment (a script, a subflow) it sleeps.

Cancelling the flow run cancels the hub job it is following.
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_client, get_run_logger, pause_flow_run
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.context import FlowRunContext
from prefect.events import emit_event
from prefect.exceptions import Pause
from prefect.input import RunInput
from prefect.states import Scheduled
from pydantic import BaseModel, Field, field_validator, model_validator

from iot_flows._exceptions import OperationFailedError
from iot_flows._window import MaintenanceWindow
from iot_flows.blocks import HubConnection
from iot_flows.client import device_id_conditions, quote_string
from iot_flows.flows._common import confirm_reported, follow_job, new_job_id, reported_value
from iot_flows.flows._connection import ConnectionRef, resolve_connection
from iot_flows.flows._firmware import installed_version, not_on_version_condition
from iot_flows.flows._ui import apply_overrides, artifact_key, check_matched, completed, outcome_line, param, run_name
from iot_flows.tasks import cancel_job, create_method_job, query_device_jobs, query_twins

__all__ = ["RolloutAbortedError", "RolloutApproval", "RolloutRequest", "RolloutResult", "WaveResult", "roll_out_firmware"]

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

    def describe(self) -> str:
        """``22:00-04:00 Europe/Berlin`` (plus the days, when limited)."""
        return f"{self.start}-{self.end} {self.timezone}" + (f" ({', '.join(self.days)})" if self.days else "")


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
    hold_worker_max_seconds: float = Field(
        default=300, ge=0, description="Wait for the window in-process at most this long; longer waits reschedule the run."
    )

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


async def _attempt(conn: HubConnection, request: RolloutRequest, condition: str, ids: set[str], label: str, title: str = ""):  # type: ignore[no-untyped-def]
    """One firmwareUpdate job over ``condition``; follow ``ids`` to a verdict (``title`` names it in the UI)."""
    job_id = new_job_id(f"rollout-{label}")
    await create_method_job(conn, job_id, "firmwareUpdate", condition,
                            {"fwPackageUri": request.package_uri, "version": request.version})  # fmt: skip
    try:
        await follow_job(conn, job_id, poll_interval=min(request.poll_interval_seconds, 1.0), title=title or f"rollout {label}")
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


class RolloutApproval(RunInput):
    """The resume form after the canary: approve (default) or stop the rollout."""

    approve: bool = True


def _wave_rows(plan: list[list[str]], todo: list[list[str]], results: dict[int, WaveResult], note: str) -> list[dict[str, Any]]:
    rows = []
    for index, wave in enumerate(plan):
        w = results.get(index)
        status = ("already current" if not todo[index] else note if w is None else
                  "updated" if w.updated == w.devices else f"{w.success_ratio:.0%} updated")  # fmt: skip
        rows.append({"wave": f"{index + 1}/{len(plan)}", "devices": len(wave), "to update": len(todo[index]),
                     "updated": w.updated if w else 0, "failed": len(w.failed) if w else 0,
                     "timed out": len(w.timed_out) if w else 0, "attempts": w.attempts if w else 0,
                     "status": status, "seconds": w.seconds if w else 0})  # fmt: skip
    return rows


async def _rename(name: str) -> None:
    context = FlowRunContext.get()
    if context and context.flow_run:
        async with get_client() as client:
            await client.update_flow_run(context.flow_run.id, name=name)


async def _wait_for_window(request: RolloutRequest, index: int, publish: Any) -> None:
    """Wait until the window opens: in-process when short or outside a deployment, else reschedule the run."""
    window = request.maintenance_window
    delay = window.seconds_until_open() if window else 0.0
    if not window or delay <= 0:
        return
    opens = datetime.now(UTC) + timedelta(seconds=delay)
    local = opens.astimezone(window.parsed().tz)
    note = f"wave {index + 1} starts {window.start} {window.timezone}"
    hours, minutes = divmod(round(delay / 60), 60)
    wait = f"{hours} h {minutes} min" if hours else f"{minutes} min" if minutes else f"{delay:.0f} s"
    when = f"{note} ({local:%a %Y-%m-%d %H:%M}, in {wait}; window {window.describe()})"
    await publish(f"waiting: {note}")
    await create_markdown_artifact(
        f"# Firmware {request.version}: {note}\n\n{when}.\n", key=artifact_key("rollout", request.version, "window"),
        description=f"Firmware {request.version}: {note}",
    )  # fmt: skip
    logger = get_run_logger()
    context = FlowRunContext.get()
    deployed = bool(context and context.flow_run and context.flow_run.deployment_id)
    if deployed and delay > request.hold_worker_max_seconds:
        logger.info("%s: rescheduling this run for %s UTC (the worker is free meanwhile)", when, f"{opens:%H:%M}")
        async with get_client() as client:
            state = Scheduled(scheduled_time=opens, name="AwaitingWindow", message=note)
            result = await client.set_flow_run_state(context.flow_run.id, state, force=True)  # type: ignore[union-attr]
        raise Pause(note, state=result.state)
    logger.info("%s: waiting in this process", when)
    await asyncio.sleep(delay)


@flow(name="Roll out firmware in waves", log_prints=True,
      flow_run_name=run_name(lambda p: f"firmware {param(p, 'version')} · rollout to {param(p, 'target_condition', '*')}"))  # fmt: skip
async def roll_out_firmware(
    request: RolloutRequest,
    connection: ConnectionRef = None,
    version: str | None = None,
    package_uri: str | None = None,
    target_condition: str | None = None,
    min_devices: int = 0,
) -> RolloutResult:
    """Roll firmware out in waves with gates, abort thresholds, retries and maintenance windows.

    Waves are cut from every matching device in id order (stable across re-runs); devices
    already on ``version`` are skipped inside their wave. ``version``, ``package_uri`` and
    ``target_condition`` override the request's fields (flat parameters, one per ``--param``).

    Artifacts: ``rollout-<version>`` (per-wave table, a new version before the canary, after
    every wave and while waiting), ``rollout-<version>-window`` (when the next wave starts).

    Raises:
        RolloutAbortedError: a wave missed its gate or passed the abort threshold, or the
            approval was refused; ``summary`` is the :class:`RolloutResult` so far.
        TooFewDevicesError: fewer than ``min_devices`` devices matched ``target_condition``.
    """
    logger = get_run_logger()
    request = apply_overrides(request, version=version, package_uri=package_uri, target_condition=target_condition)
    conn = await resolve_connection(connection)
    where = "" if request.target_condition.strip() == "*" else f" WHERE {request.target_condition}"
    rows = await query_twins(conn, f"SELECT deviceId, properties.reported FROM devices{where}")
    zero = check_matched(len(rows), request.target_condition, min_devices, f"rollout of {request.version}")
    current = {r["deviceId"] for r in rows if installed_version({"properties": {"reported": r.get("reported")}}) == request.version}
    plan = split_waves(sorted(r["deviceId"] for r in rows), request.waves)
    todo = [[d for d in wave if d not in current] for wave in plan]
    targets = sum(len(t) for t in todo)
    result = RolloutResult(version=request.version, status="completed", targets=targets, already_current=len(current))
    logger.info("rollout %s: %d targets (%d already current) in %d waves", request.version, targets, len(current), len(plan))
    key = artifact_key("rollout", request.version)
    title = f"Firmware {request.version} rollout to {len(rows)} devices ({request.target_condition})"
    results: dict[int, WaveResult] = {}

    async def publish(note: str) -> None:
        await create_table_artifact(
            _wave_rows(plan, todo, results, "pending") or [{"wave": "-", "devices": 0, "status": zero or "no devices"}],
            key=key, description=f"{title}: {note}",
        )  # fmt: skip

    await publish(zero or f"{targets} to update in {len(plan)} waves, {len(current)} already current")
    progress = await create_progress_artifact(0.0, description=f"{title}: share of the {targets} targets handled")
    finished = 0
    approval_due = request.approval_after_canary and len(plan) > 1
    for index, wave in enumerate(todo):
        if not wave:
            continue
        label = f"wave {index + 1}/{len(plan)}"
        await _wait_for_window(request, index, publish)
        await _rename(f"firmware {request.version} · {label}")
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
                logger.info("%s: retrying %d devices in %.1f s", label, len(remaining), delay)
                await asyncio.sleep(delay)
                parts = device_id_conditions(sorted(remaining))  # one job per part: each under 8 KB
            ok, failed, timed_out = set(), set(), set()
            for part, (ids, cond) in enumerate(parts):
                suffix = f" (part {part + 1}/{len(parts)})" if len(parts) > 1 else ""
                o, f, t = await _attempt(
                    conn, request, cond, set(ids), f"w{index + 1}a{attempt + 1}p{part + 1}",
                    f"firmware {request.version}, {label}, attempt {attempt + 1}: {len(ids)} devices{suffix}",
                )  # fmt: skip
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
        results[index] = outcome
        finished += len(wave)
        await update_progress_artifact(progress, 100.0 * finished / max(targets, 1))
        emit_event(
            event="iot-flows.rollout.wave-completed",
            resource={"prefect.resource.id": f"iot-flows.rollout.{request.version}.wave.{index}"},
            payload=outcome.model_dump(),
        )
        counts = outcome_line(len(wave), len(updated), len(failed), timed_out=len(timed_out))
        logger.info("%s: %s (%.0f %% updated)", label, counts, 100 * outcome.success_ratio)
        failure_ratio = (len(failed) + len(timed_out)) / len(wave)
        if failure_ratio > request.abort_failure_ratio or outcome.success_ratio < request.min_success_ratio:
            result.status = "aborted"
            result.reason = (f"{label}: success {outcome.success_ratio:.0%} (gate {request.min_success_ratio:.0%}), "
                             f"failures {failure_ratio:.0%} (abort above {request.abort_failure_ratio:.0%})")  # fmt: skip
            break
        await publish(f"{label} done: {counts}")
        if approval_due and index == 0 and any(todo[1:]):
            summary = (f"**Canary of firmware {request.version}**: {counts} in {outcome.seconds:.0f} s. "
                       f"Next: {sum(len(t) for t in todo[1:])} devices in {len(plan) - 1} waves. "
                       f"Resume with approve=true to continue, false to stop the rollout.")  # fmt: skip
            await publish(f"waiting for approval: {label} done: {counts}")
            logger.info("canary done (%s): waiting for approval (resume the flow run to continue)", counts)
            approval = await pause_flow_run(
                wait_for_input=RolloutApproval.with_initial_data(description=summary, approve=True),
                timeout=request.approval_timeout_seconds,
            )  # fmt: skip
            if not approval.approve:
                result.status, result.reason = "aborted", f"not approved after the canary ({counts})"
                break
    done = outcome_line(finished, sum(w.updated for w in result.waves),
                        sum(len(w.failed) for w in result.waves), timed_out=sum(len(w.timed_out) for w in result.waves))  # fmt: skip
    await publish(f"{result.status}: {done}" + (f"; {result.reason}" if result.reason else ""))
    if result.status == "aborted":
        raise RolloutAbortedError(f"rollout of {request.version} aborted: {result.reason}", summary=result)
    return completed(result, zero or f"firmware {request.version} on {len(rows)} devices: {done}, "  # type: ignore[return-value]
                             f"{len(current)} already current")
