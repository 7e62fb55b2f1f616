"""The rollout flow: plan the waves, then per wave window -> run -> gate -> health -> approval."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_client, get_run_logger, pause_flow_run
from prefect.artifacts import acreate_progress_artifact, acreate_table_artifact, aupdate_progress_artifact
from prefect.client.schemas.objects import State
from prefect.context import FlowRunContext
from prefect.exceptions import Pause
from prefect.input import RunInput
from prefect.states import Scheduled

from iot_flows._exceptions import OperationFailedError
from iot_flows.blocks import HubConnection
from iot_flows.client import device_id_conditions, quote_string
from iot_flows.flows._connection import ConnectionRef, resolve_connection
from iot_flows.flows._ui import (
    apply_overrides,
    artifact_key,
    check_matched,
    completed,
    n_devices,
    outcome_line,
    param,
    run_name,
)
from iot_flows.flows.rollout._lease import RolloutInProgressError, RolloutLease
from iot_flows.flows.rollout._mechanisms import Mechanism, mechanism_for
from iot_flows.flows.rollout._models import RolloutPlan, RolloutRequest, RolloutResult, WavePlan
from iot_flows.flows.rollout._policies import Policies, policies_for
from iot_flows.flows.rollout._previous import previous_from_twin, previous_state, record_previous
from iot_flows.flows.rollout._publish import Board, emit_rollout_event, publish_plan, publish_window_note, rename_run
from iot_flows.flows.rollout._resume import adopt_in_flight, take_lease
from iot_flows.flows.rollout._rollback import roll_back
from iot_flows.flows.rollout._wave import WaveRunner
from iot_flows.tasks import query_twins

__all__ = ["RolloutAbortedError", "RolloutApproval", "RolloutInProgressError", "roll_out_firmware", "split_waves", "wave_condition"]


class RolloutAbortedError(OperationFailedError):
    """Raised when a wave fails its gate, passes an abort criterion or its health gate."""


class RolloutApproval(RunInput):
    """The resume form after the canary: approve (default) or stop the rollout."""

    approve: bool = True


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


def wave_condition(target: str, ids: list[str], version: str | None = None, pending: str | None = None) -> str:
    """A short condition for a wave: its id range within the target, minus current devices
    (``pending``, or the firmware rule for ``version``)."""
    from iot_flows.flows._firmware import not_on_version_condition

    base = "" if target.strip() == "*" else f"({target}) AND "
    pending = pending or (not_on_version_condition(version) if version else None)
    cond = f"{base}deviceId >= {quote_string(ids[0])} AND deviceId <= {quote_string(ids[-1])}"
    return f"{cond} AND ({pending})" if pending else cond


async def _wait_for_window(request: RolloutRequest, policies: Policies, index: int, board: Board) -> None:
    """Wait until the window opens: in-process when short or outside a deployment, else reschedule the run."""
    delay = policies.window.seconds_until_open()
    if delay <= 0:
        return
    window = request.maintenance_window
    assert window is not None
    note = f"wave {index + 1} starts {window.start} {window.timezone}"
    await board.publish(f"waiting: {note}")
    when = await publish_window_note(request, note, delay)
    logger = get_run_logger()
    context = FlowRunContext.get()
    if context and context.flow_run and context.flow_run.deployment_id and delay > request.hold_worker_max_seconds:
        opens = datetime.now(UTC) + timedelta(seconds=delay)
        logger.info("%s: rescheduling this run for %s UTC (the worker is free meanwhile)", when, f"{opens:%H:%M}")
        async with get_client() as client:
            state: State[Any] = Scheduled(scheduled_time=opens, name="AwaitingWindow", message=note)
            result = await client.set_flow_run_state(context.flow_run.id, state, force=True)
        raise Pause(note, state=result.state)
    logger.info("%s: waiting in this process", when)
    await asyncio.sleep(delay)


def _plan(request: RolloutRequest, mech: Mechanism, policies: Policies, plan: list[list[str]], todo: list[list[str]],
          current: list[str]) -> RolloutPlan:  # fmt: skip
    opens = policies.window.opens_at() if request.maintenance_window else None
    waves = [WavePlan(wave=i + 1, devices=len(w), to_update=len(todo[i]), first=w[0], last=w[-1],
                      job_condition=wave_condition(request.target_condition, w, pending=mech.pending_condition()) if todo[i] else None,
                      opens=opens.isoformat().replace("+00:00", "Z") if opens and todo[i] else None)
             for i, w in enumerate(plan)]  # fmt: skip
    return RolloutPlan(rollout_id=request.key, version=request.version, mechanism=request.mechanism,
                       targets=sum(len(t) for t in todo), already_current=len(current), skipped=current[:1000], waves=waves)  # fmt: skip


async def _health(conn: HubConnection, policies: Policies, ids: list[str]) -> str | None:
    """The health gate over ``ids`` (None: it held, or there is none)."""
    if policies.health is None or not ids:
        return None
    gate = policies.health.gate

    async def count() -> int:
        parts = device_id_conditions(ids)
        rows = [await query_twins(conn, f"SELECT deviceId FROM devices WHERE ({cond}) AND ({gate.condition})") for _, cond in parts]
        return sum(len(r) for r in rows)

    return await policies.health.hold(count, len(ids), clock=time.monotonic)


@flow(name="Roll out firmware in waves", log_prints=True,
      flow_run_name=run_name(lambda p: f"firmware {param(p, 'version')} · rollout to {param(p, 'target_condition', '*')}"))  # fmt: skip
async def roll_out_firmware(
    request: RolloutRequest,
    connection: ConnectionRef = None,
    version: str | None = None,
    package_uri: str | None = None,
    target_condition: str | None = None,
    min_devices: int = 0,
    dry_run: bool | None = None,
) -> RolloutResult:
    """Roll an update out in waves with gates, abort criteria, retries, windows, rate and health gates.

    Waves are cut from every matching device in id order (stable across re-runs); devices
    already current are skipped inside their wave. ``version``, ``package_uri``,
    ``target_condition`` and ``dry_run`` override the request's fields (flat parameters).

    Artifacts: ``rollout-<id>`` (per-wave table, live counts while a wave runs),
    ``rollout-<id>-window`` (when the next wave starts), ``rollout-<id>-plan`` (dry run),
    ``rollout-<id>-previous`` (each updated device's version before the rollout).
    Events: ``iot-flows.rollout.wave-completed`` per wave; ``iot-flows.rollout.planned``,
    ``.completed``, ``.aborted``, ``.rolled-back`` per verdict.

    Raises:
        RolloutAbortedError: a gate, abort criterion or health gate stopped it, or the
            approval was refused; ``summary`` is the :class:`RolloutResult` so far.
        RolloutInProgressError: a run of the same rollout id (``rollout_id``, else the
            version) is running now. Re-running an id after a stop or crash continues it:
            devices already current are skipped, waves are cut the same way.
        TooFewDevicesError: fewer than ``min_devices`` devices matched ``target_condition``.
    """
    request = apply_overrides(request, version=version, package_uri=package_uri, target_condition=target_condition,
                              dry_run=dry_run)  # fmt: skip
    conn = await resolve_connection(connection)
    mech, policies = mechanism_for(request), policies_for(request)
    where = "" if request.target_condition.strip() == "*" else f" WHERE {request.target_condition}"
    rows = await query_twins(conn, f"SELECT deviceId, tags, properties.reported FROM devices{where}", page_size=1000)
    zero = check_matched(len(rows), request.target_condition, min_devices, f"rollout of {request.version}")
    twins = {r["deviceId"]: {"tags": r.get("tags"), "properties": {"reported": r.get("reported")}} for r in rows}
    current = sorted(d for d, t in twins.items() if mech.is_current(t))
    plan = split_waves(sorted(twins), request.waves)
    todo = [[d for d in wave if d not in set(current)] for wave in plan]
    targets = sum(len(t) for t in todo)
    result = RolloutResult(version=request.version, status="completed", targets=targets, already_current=len(current),
                           rollout_id=request.key)  # fmt: skip
    board = Board(request, plan, todo, f"{mech.label()} rollout to {n_devices(len(rows))} ({request.target_condition})")
    if request.dry_run:
        result.status, result.plan = "planned", _plan(request, mech, policies, plan, todo, current)
        await publish_plan(request, result.plan)
        emit_rollout_event(request, "planned", {"targets": targets, "waves": [len(t) for t in todo]})
        return completed(result, f"plan: {targets} targets in {len(plan)} waves, {len(current)} already current")  # type: ignore[return-value]
    lease = await take_lease(conn, request, sorted(twins)[0]) if twins else None
    try:
        return await _run(conn, request, mech, policies, twins, rows, zero, current, plan, todo, result, board, lease)
    finally:
        if lease is not None:
            await lease.release()


async def _run(conn: HubConnection, request: RolloutRequest, mech: Mechanism, policies: Policies,
               twins: dict[str, Any], rows: list[Any], zero: str | None, current: list[str], plan: list[list[str]],
               todo: list[list[str]], result: RolloutResult, board: Board, lease: RolloutLease | None) -> RolloutResult:  # fmt: skip
    """The waves, with the lease held (see :func:`roll_out_firmware`)."""
    logger = get_run_logger()
    targets = result.targets
    adopted = await adopt_in_flight(conn, request, {d for t in todo for d in t})
    result.previous = {d: previous_state(twins[d], request) for t in todo for d in t}
    logger.info("rollout %s: %d targets (%d already current) in %d waves", request.key, targets, len(current), len(plan))
    await board.publish(zero or f"{targets} to update in {len(plan)} waves, {len(current)} already current")
    if result.previous:
        await acreate_table_artifact([{"device": d, **p} for d, p in list(result.previous.items())[:5000]],
                                    key=artifact_key("rollout", request.key, "previous"),
                                    description=f"Rollout {request.key}: each target's version before it was touched")  # fmt: skip
    progress = await acreate_progress_artifact(0.0, description=f"{board.title}: share of the {targets} targets handled")
    finished = 0
    # devices a crashed run of this id already updated: a rollback puts them back too
    changed = sorted(d for d in current if previous_from_twin(twins[d], request))
    result.previous.update({d: previous_state(twins[d], request) for d in changed})
    approval_due = request.approval_after_canary and len(plan) > 1
    for index, wave in enumerate(todo):
        if not wave:
            continue
        label = f"wave {index + 1}/{len(plan)}"
        if lease is not None and lease.lost:
            raise RolloutInProgressError(f"rollout {request.key}: another run took its lease over before {label}; stopping here")
        await _wait_for_window(request, policies, index, board)
        await rename_run(f"{mech.label()} · {label}")

        async def live(what: str, tally: Any, index: int = index) -> None:
            await board.live_update(index, what, tally)

        await record_previous(conn, request, {d: result.previous[d] for d in wave})
        runner = WaveRunner(conn, request, mech, policies, live)
        cond = wave_condition(request.target_condition, wave, pending=mech.pending_condition())
        run = await runner.run(index, label, wave, cond, adopted=adopted)
        outcome = run.result
        result.waves.append(outcome)
        board.results[index] = outcome
        changed += run.succeeded
        finished += len(wave)
        await aupdate_progress_artifact(progress, 100.0 * finished / max(targets, 1))
        emit_rollout_event(request, "wave-completed", outcome.model_dump(), wave=index)
        counts = outcome_line(len(wave), outcome.updated, len(outcome.failed), rejected=len(outcome.rejected),
                              timed_out=len(outcome.timed_out))  # fmt: skip
        logger.info("%s: %s (%.0f %% updated, %d retried)", label, counts, 100 * outcome.success_ratio, outcome.retried)
        reason = run.abort or policies.gate.verdict(run.tally)
        if not reason and policies.health is not None:
            held = time.monotonic()
            reason = await _health(conn, policies, run.succeeded)
            outcome.health_seconds = round(time.monotonic() - held, 2)
        if reason:
            result.status, result.reason = "aborted", f"{label}: {reason}"
            break
        await board.publish(f"{label} done: {counts}")
        if approval_due and index == 0 and any(todo[1:]):
            summary = (f"**Canary of firmware {request.version}**: {counts} in {outcome.seconds:.0f} s. "
                       f"Next: {sum(len(t) for t in todo[1:])} devices in {len(plan) - 1} waves. "
                       f"Resume with approve=true to continue, false to stop the rollout.")  # fmt: skip
            await board.publish(f"waiting for approval: {label} done: {counts}")
            logger.info("canary done (%s): waiting for approval (resume the flow run to continue)", counts)
            # In a flow's event loop pause_flow_run returns an awaitable (Prefect's sync/async dual API).
            paused: Any = pause_flow_run(wait_for_input=RolloutApproval.with_initial_data(description=summary, approve=True),
                                         timeout=request.approval_timeout_seconds)  # fmt: skip
            approval: RolloutApproval = await paused
            if not approval.approve:
                result.status, result.reason = "aborted", f"not approved after the canary ({counts})"
                break
    done = outcome_line(finished, sum(w.updated for w in result.waves), sum(len(w.failed) for w in result.waves),
                        rejected=sum(len(w.rejected) for w in result.waves),
                        timed_out=sum(len(w.timed_out) for w in result.waves))  # fmt: skip
    if result.status == "aborted" and request.rollback_on_abort:
        result.rollback = await roll_back(conn, request, policies, result, changed, board)
    await board.publish(f"{result.status}: {done}" + (f"; {result.reason}" if result.reason else ""))
    emit_rollout_event(request, result.status, {"reason": result.reason, "targets": targets, "summary": done})
    if result.status == "aborted":
        raise RolloutAbortedError(f"rollout of {request.version} aborted: {result.reason}", summary=result)
    return completed(result, zero or f"{mech.label()} on {n_devices(len(rows))}: {done}, "  # type: ignore[return-value]
                             f"{len(current)} already current")

