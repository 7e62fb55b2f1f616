"""The demo's staged rollout: the dry-run plan first, then the rollout with retries and a health gate.

Building 44 runs with 10 % of firmware downloads failing (``DEMO_FAULTY_BEHAVIOUR``):
the rollout retries those transient failures (``downloadFailed``) with backoff until they
heal, and after each wave a health gate (a twin query over the wave's updated devices)
must hold before the next wave starts.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from iot_flows.blocks import HubConnection
from iot_flows.flows.rollout import RolloutRequest, RolloutResult, roll_out_firmware

__all__ = ["check_rollout", "demo_rollout", "describe_rollout"]


@flow(name="Demo: plan, then roll out with retries and a health gate",
      flow_run_name=lambda: "rollout · plan, retries, health gate")
async def demo_rollout(request: RolloutRequest, connection: HubConnection | None = None) -> RolloutResult:
    """Run ``request`` as a dry run (the plan, nothing changes), then for real; the result
    carries the plan. Raises what :func:`roll_out_firmware` raises."""
    plan = (await roll_out_firmware(request, connection, dry_run=True)).plan
    result = await roll_out_firmware(request, connection)
    result.plan = plan
    return result


def describe_rollout(result: Any) -> list[str]:
    """Lines the demo prints under the rollout: the plan, the retries that healed, the health gate."""
    lines = []
    plan = result.plan
    if plan is not None:
        sizes = ", ".join(str(w.to_update) for w in plan.waves)
        lines.append(f"dry-run plan: {plan.targets} targets in {len(plan.waves)} waves ({sizes}), "
                     f"{plan.already_current} already current; nothing changed")  # fmt: skip
    retried = sum(w.retried for w in result.waves)
    failed = sum(len(w.failed) + len(w.rejected) + len(w.timed_out) for w in result.waves)
    attempts = ", ".join(str(w.attempts) for w in result.waves)
    lines.append(f"retries: {retried} transient download failures retried with backoff, {failed} left failed "
                 f"(attempts per wave: {attempts})")  # fmt: skip
    held = [w.health_seconds for w in result.waves if w.health_seconds is not None]
    if held:
        lines.append(f"health gate: held after each of {len(held)} waves (waited {sum(held):.1f} s in all)")
    return lines


def check_rollout(result: Any) -> str | None:
    """The demo must show all three: a plan, a retry that healed, the health gate."""
    if result.plan is None or result.plan.targets != result.targets:
        return "no dry-run plan (or it differs from the rollout)"
    if not any(w.retried for w in result.waves):
        return "no transient failure was retried (the fault injection did not hit)"
    if any(w.health_seconds is None for w in result.waves):
        return "a wave passed without the health gate"
    return None
