"""Reading the demo's flow runs back from the Prefect API, and the final summary table.

Task runs are counted per scenario over the flow run *and* every subflow run under it
(``reboot_devices`` runs ``run_method_job`` as a subflow, for example). Prefect records a
subflow call as a task run of its parent too, so those placeholders are in the count.
Prefect 3 persists task runs from client events, a little after the flow returns: the
count is re-read until it is stable and every task run it holds is in a final state.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId
from rich.table import Table

__all__ = ["RunRecord", "read_back", "summary_table"]

PAGE = 200


@dataclass
class RunRecord:
    """What one scenario did; filled in by the runner, then from the Prefect API."""

    key: str
    title: str
    seed: str
    flow_run_id: uuid.UUID | None = None
    flow_run_name: str = "-"
    state: str = "-"
    devices: int | None = None
    succeeded: int | None = None
    failed: int | None = None
    seconds: float = 0.0
    ok: bool = False
    problem: str | None = None
    task_runs: int | None = None
    subflow_runs: int | None = None
    task_run_names: dict[str, int] = field(default_factory=dict)


async def _descendants(client: PrefectClient, root: uuid.UUID) -> list[uuid.UUID]:
    """The flow run and every subflow run below it."""
    found, frontier = [root], [root]
    while frontier:
        children = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=frontier))
        )
        frontier = [c.id for c in children if c.id not in found]
        found.extend(frontier)
    return found


async def _task_runs(client: PrefectClient, flow_run_ids: list[uuid.UUID]) -> list[object]:
    runs: list[object] = []
    while True:
        page = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=flow_run_ids)), limit=PAGE, offset=len(runs)
        )
        runs.extend(page)
        if len(page) < PAGE:
            return runs


async def read_back(client: PrefectClient, records: list[RunRecord], *, settle_seconds: float = 20.0) -> None:
    """Fill in flow run names, states and task-run counts from the API."""
    deadline = time.monotonic() + settle_seconds
    for record in records:
        if record.flow_run_id is None:
            continue
        run = await client.read_flow_run(record.flow_run_id)
        record.flow_run_name = run.name
        record.state = run.state.name if run.state and run.state.name else "-"
        ids = await _descendants(client, record.flow_run_id)
        record.subflow_runs = len(ids) - 1
        previous = -1
        while True:
            runs = await _task_runs(client, ids)
            settled = all(r.state is not None and r.state.is_final() for r in runs)  # type: ignore[attr-defined]
            if (settled and len(runs) == previous) or time.monotonic() > deadline:
                break
            previous = len(runs)
            await asyncio.sleep(0.5)
        record.task_runs = len(runs)
        names: dict[str, int] = {}
        for r in runs:
            base = r.name.rsplit("-", 1)[0]  # type: ignore[attr-defined]  # "get_job-3a1" -> "get_job"
            names[base] = names.get(base, 0) + 1
        record.task_run_names = dict(sorted(names.items()))


def _n(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def summary_table(records: list[RunRecord], *, title: str) -> Table:
    """One row per scenario; a scenario that did not succeed says why in its last column."""
    table = Table(title=title, title_justify="left")
    for name, justify in (("scenario", "left"), ("seed", "center"), ("flow run", "left"), ("state", "left"),
                          ("devices", "right"), ("ok", "right"), ("failed", "right"), ("seconds", "right"),
                          ("task runs", "right"), ("subflows", "right")):  # fmt: skip
        # The long flow-run name wraps; the scenario key and the figures never shrink to "s…".
        wraps = name == "flow run"
        table.add_column(name, justify=justify, no_wrap=not wraps, overflow="fold" if wraps else "ellipsis",  # type: ignore[arg-type]
                         min_width=max((len(r.key) for r in records), default=8) if name == "scenario"
                         else 20 if wraps else None)  # fmt: skip
    problems = any(not r.ok for r in records)
    if problems:
        table.add_column("problem", style="red")
    for r in records:
        colour = "green" if r.ok else "red"
        row = [r.key, r.seed, r.flow_run_name, f"[{colour}]{r.state}[/]", _n(r.devices), _n(r.succeeded),
               _n(r.failed), f"{r.seconds:.1f}", _n(r.task_runs), _n(r.subflow_runs)]  # fmt: skip
        if problems:
            row.append(r.problem or ("" if r.ok else "did not succeed"))
        table.add_row(*row)
    return table
