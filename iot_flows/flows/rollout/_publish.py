"""What an operator sees of a rollout: the per-wave table, the plan, the window note, events."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import get_client
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.context import FlowRunContext
from prefect.events import emit_event

from iot_flows.flows._ui import artifact_key
from iot_flows.flows.rollout._models import RolloutPlan, RolloutRequest, WaveResult
from iot_flows.flows.rollout._policies import WaveTally

__all__ = ["Board", "emit_rollout_event", "publish_plan", "rename_run"]


def emit_rollout_event(request: RolloutRequest, name: str, payload: dict[str, Any], wave: int | None = None) -> Any:
    """``iot-flows.rollout.<name>`` (``wave-completed``, ``completed``, ``aborted``, ...)."""
    resource = f"iot-flows.rollout.{request.key}" + (f".wave.{wave}" if wave is not None else "")
    return emit_event(event=f"iot-flows.rollout.{name}",
                      resource={"prefect.resource.id": resource, "prefect.resource.name": request.key},
                      payload={"rolloutId": request.key, "version": request.version, **payload})  # fmt: skip


async def rename_run(name: str) -> None:
    """Rename the current Prefect flow run (no-op outside a flow run)."""
    context = FlowRunContext.get()
    if context and context.flow_run:
        async with get_client() as client:
            await client.update_flow_run(context.flow_run.id, name=name)


async def publish_plan(request: RolloutRequest, plan: RolloutPlan) -> None:
    """The dry-run plan as a markdown artifact ``rollout-<id>-plan``."""
    lines = [f"# Plan: {plan.mechanism} update to {plan.version} (rollout {plan.rollout_id})", "",
             f"{plan.targets} targets, {plan.already_current} skipped as already current.", "",
             "| wave | devices | to update | ids | window opens (UTC) | job condition |", "|---|---|---|---|---|---|"]  # fmt: skip
    for w in plan.waves:
        cond = (w.job_condition or "").replace("|", "\\|")
        lines.append(f"| {w.wave} | {w.devices} | {w.to_update} | {w.first} .. {w.last} | {w.opens or 'now'} | `{cond}` |")
    await acreate_markdown_artifact("\n".join(lines) + "\n", key=artifact_key("rollout", request.key, "plan"),
                                   description=f"Rollout {request.key}: dry-run plan")  # fmt: skip


class Board:
    """The per-wave table ``rollout-<id>`` (a new version per event, live rows throttled)."""

    def __init__(self, request: RolloutRequest, plan: list[list[str]], todo: list[list[str]], title: str) -> None:
        self.request, self.plan, self.todo, self.title = request, plan, todo, title
        self.results: dict[int, WaveResult] = {}
        self.live: dict[int, WaveTally] = {}
        self.key = artifact_key("rollout", request.key)
        self._last = 0.0

    def rows(self, note: str = "pending") -> list[dict[str, Any]]:
        """One table row per planned wave: its result, live tally, or ``note`` when not started."""
        rows = []
        for index, wave in enumerate(self.plan):
            w, live = self.results.get(index), self.live.get(index)
            if not self.todo[index]:
                status = "already current"
            elif w is not None:
                status = "updated" if w.updated == w.devices else f"{w.success_ratio:.0%} updated"
            else:
                status = f"running: {live.describe()}" if live else note
            rows.append({"wave": f"{index + 1}/{len(self.plan)}", "devices": len(wave), "to update": len(self.todo[index]),
                         "updated": w.updated if w else (live.succeeded if live else 0),
                         "failed": len(w.failed) if w else (live.failed if live else 0),
                         "rejected": len(w.rejected) if w else (live.rejected if live else 0),
                         "timed out": len(w.timed_out) if w else (live.timed_out if live else 0),
                         "offline at start": w.offline_at_start if w else (live.offline if live else 0),
                         "attempts": w.attempts if w else 0, "retried": w.retried if w else 0,
                         "status": status, "seconds": w.seconds if w else 0})  # fmt: skip
        return rows

    async def publish(self, note: str, empty: str | None = None) -> None:
        """Write the table as a new version of the ``rollout-<id>`` table artifact."""
        self._last = time.monotonic()
        await acreate_table_artifact(self.rows() or [{"wave": "-", "devices": 0, "status": empty or "no devices"}],
                                    key=self.key, description=f"{self.title}: {note}")  # fmt: skip

    async def live_update(self, index: int, label: str, tally: WaveTally, every: float = 5.0) -> None:
        """Record a wave's live counts; publish them at once for a new wave, then at most
        every ``every`` seconds."""
        first = index not in self.live
        self.live[index] = tally
        if first or time.monotonic() - self._last >= every:
            await self.publish(f"{label}: {tally.describe()}")


async def publish_window_note(request: RolloutRequest, note: str, delay: float) -> str:
    """The ``rollout-<id>-window`` note; returns the sentence it shows."""
    window = request.maintenance_window
    assert window is not None
    opens = datetime.now(UTC) + timedelta(seconds=delay)
    local = opens.astimezone(window.parsed().tz)
    hours, minutes = divmod(round(delay / 60), 60)
    wait = f"{hours} h {minutes} min" if hours else f"{minutes} min" if minutes else f"{delay:.0f} s"
    when = f"{note} ({local:%a %Y-%m-%d %H:%M}, in {wait}; window {window.describe()})"
    await acreate_markdown_artifact(f"# Firmware {request.version}: {note}\n\n{when}.\n",
                                   key=artifact_key("rollout", request.key, "window"),
                                   description=f"Firmware {request.version}: {note}")  # fmt: skip
    return when
