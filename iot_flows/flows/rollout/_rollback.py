"""Rollback on abort: put the devices that changed back, as its own tracked wave.

What each device ran before comes from ``tags.rollouts.<id>.previous`` (:mod:`._previous`),
so a rollback also covers devices a crashed run of the same id had updated. Firmware
mechanisms send the previous version (``rollback_package_uri`` or the recorded
``package_uri``), one job per version; a template runs its declared ``rollback`` action
(``RolloutRequest`` refuses ``rollback_on_abort`` for a template without one).
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger

from iot_flows.blocks import HubConnection
from iot_flows.flows.rollout._mechanisms import Mechanism, TemplateUpdate, mechanism_for
from iot_flows.flows.rollout._models import RolloutRequest, RolloutResult, WaveResult
from iot_flows.flows.rollout._policies import AbortPolicy, Policies
from iot_flows.flows.rollout._publish import Board, emit_rollout_event
from iot_flows.flows.rollout._wave import WaveRunner

__all__ = ["roll_back"]


def _groups(request: RolloutRequest, result: RolloutResult, changed: list[str]) -> list[tuple[str, Mechanism, list[str]]]:
    """``(label, mechanism, devices)`` per rollback job group; empty when none applies."""
    if request.mechanism == "template":
        assert request.template is not None and request.template.rollback is not None  # validated
        return [("rollback", TemplateUpdate(request, template=request.template.rollback), changed)]
    by_version: dict[str, list[str]] = {}
    for device_id in changed:
        previous = result.previous.get(device_id) or {}
        if previous.get("version"):
            by_version.setdefault(str(previous["version"]), []).append(device_id)
    out: list[tuple[str, Mechanism, list[str]]] = []
    for version, ids in sorted(by_version.items()):
        uri = (request.rollback_package_uri.format(version=version) if request.rollback_package_uri
               else result.previous[ids[0]].get("package_uri"))  # fmt: skip
        if uri:
            out.append((f"rollback to {version}", type(mechanism_for(request))(request, version=version, package_uri=uri), ids))
    return out


async def roll_back(conn: HubConnection, request: RolloutRequest, policies: Policies, result: RolloutResult,
                    changed: list[str], board: Board) -> WaveResult | None:  # fmt: skip
    """Put ``changed`` back on what they ran before (module docstring); None when nothing
    changed or no previous package is known (logged)."""
    logger = get_run_logger()
    groups = _groups(request, result, changed) if changed else []
    if not groups:
        logger.warning("rollback skipped: %s", "nothing changed" if not changed else "no previous package known (set rollback_package_uri)")
        return None
    quiet = Policies(policies.gate, AbortPolicy([]), policies.retry, policies.window, None, None)
    total = WaveResult(index=len(board.plan), devices=sum(len(ids) for _, _, ids in groups), kind="rollback")

    async def progress(label: str, tally: Any) -> None:
        await board.live_update(len(board.plan), label, tally)

    for label, mech, ids in groups:
        part = (await WaveRunner(conn, request, mech, quiet, progress).run(len(board.plan), label, ids, None, kind="rollback")).result
        total.updated += part.updated
        total.failed += part.failed
        total.rejected += part.rejected
        total.timed_out += part.timed_out
        total.attempts = max(total.attempts, part.attempts)
        total.retried += part.retried
        total.seconds += part.seconds
        total.task_runs += part.task_runs
    total.success_ratio = round(total.updated / max(total.devices, 1), 4)
    emit_rollout_event(request, "rolled-back", total.model_dump(exclude={"failed", "rejected", "timed_out"}))
    return total
