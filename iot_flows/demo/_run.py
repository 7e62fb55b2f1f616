"""The demo itself: start everything, run every scenario as a Prefect flow run, report, stop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from dataclasses import dataclass
from typing import Any

from prefect import tags
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL
from rich.console import Console

from iot_flows._ephemeral import sigint_blocked_for_children
from iot_flows.blocks import HubConnection
from iot_flows.demo._env import DemoEnvironment, FleetLayout
from iot_flows.demo._scenarios import Scenario, scenarios
from iot_flows.demo._summary import RunRecord, read_back, summary_table

__all__ = ["DEMO_TAG", "DemoOptions", "run_demo"]

#: Every demo flow run carries this Prefect tag (filter on it in the UI).
DEMO_TAG = "iot-flows-demo"


@dataclass(frozen=True)
class DemoOptions:
    """What ``iot-flows demo`` runs: the fleet size and, optionally, a subset of scenarios."""
    devices: int = 1000
    #: Run only these scenario keys (all when empty).
    only: tuple[str, ...] = ()


async def _run_scenario(
    index: int, total: int, scenario: Scenario, conn: HubConnection, console: Console, *, partial: bool = False
) -> RunRecord:
    """Run one scenario's flow; ``partial``: what it relies on did not run, so check state and reach only."""
    record = RunRecord(scenario.key, scenario.title, scenario.seed)
    console.print(f"[bold]▶[/] [{index}/{total}] {scenario.title} [dim](seed {scenario.seed}, "
                  f"{scenario.flow.name!r})[/]")  # fmt: skip
    started = time.monotonic()
    state = await scenario.flow(scenario.request, connection=conn, return_state=True)
    record.seconds = time.monotonic() - started
    record.flow_run_id = state.state_details.flow_run_id
    record.state = state.name or state.type.value
    result: Any = None
    try:
        result = await state.result()
    except Exception as exc:  # noqa: BLE001 - a named flow failure; its summary still has the counts
        result = getattr(exc, "summary", None)
        record.problem = f"{type(exc).__name__}: {exc}"
    if result is not None:
        try:
            record.devices, record.succeeded, record.failed = scenario.counts(result)
        except (AttributeError, TypeError) as exc:
            record.problem = record.problem or f"unexpected result {type(result).__name__}: {exc}"
    if record.problem is None:
        if record.devices != scenario.expected_devices:
            record.problem = f"reached {record.devices} devices, expected {scenario.expected_devices}"
        elif partial:
            pass
        elif record.failed or record.succeeded != scenario.expected_devices:
            record.problem = f"{record.failed} devices failed"
        else:
            record.problem = scenario.check(result)
    record.ok = state.is_completed() and record.problem is None
    mark = "[green]✔[/]" if record.ok else "[red]✘[/]"
    line = (f"{mark} [{index}/{total}] {scenario.title}: {record.state} in {record.seconds:.1f} s, "
            f"{record.succeeded if record.succeeded is not None else '-'}/{record.devices if record.devices is not None else '-'} devices ok")  # fmt: skip
    console.print(line + ("" if record.ok else f" [red]{record.problem}[/]"))
    if result is not None and scenario.describe is not None:
        with contextlib.suppress(AttributeError, TypeError, ValueError):
            for text in scenario.describe(result):
                console.print(f"    [dim]{text}[/]")
    return record


def _hint(console: Console, api_url: str | None) -> None:
    if api_url:
        ui = PREFECT_UI_URL.value() or api_url.removesuffix("/api")
        console.print(f"\nThe runs are in the Prefect UI at [bold]{ui}/runs[/] (tag [bold]{DEMO_TAG}[/]).")
        return
    console.print(
        "\nPrefect's temporary API server stops with the demo; the runs stay in its local database, which "
        "[bold]prefect server start[/] serves too. To watch the runs live in the Prefect UI:\n"
        "  1. in another terminal: [bold].venv/bin/prefect server start[/]\n"
        "  2. here: [bold]export PREFECT_API_URL=http://127.0.0.1:4200/api[/]\n"
        f"  3. [bold]./scripts/demo[/], and open http://127.0.0.1:4200/runs (tag [bold]{DEMO_TAG}[/])"
    )


async def run_demo(options: DemoOptions, console: Console | None = None) -> int:
    """Run the demo; returns the process exit code (0 only when every scenario succeeded)."""
    console = console or Console()
    main_task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if main_task is not None:
        loop.add_signal_handler(signal.SIGTERM, main_task.cancel)  # clean up as on Ctrl-C
    began = time.monotonic()
    layout = FleetLayout(options.devices)
    plan = [s for s in scenarios(layout) if not options.only or s.key in options.only]
    env = DemoEnvironment(layout)
    records: list[RunRecord] = []
    api_url = PREFECT_API_URL.value()
    try:
        hub = env.start_hub()
        console.print(f"[bold]hub[/]      embedded, SQLite in {env.folder}; MQTT 127.0.0.1:{hub.hub.mqtt_port}, "
                      f"REST {hub.base_url}")  # fmt: skip
        env.start_fleet()
        t0 = time.monotonic()
        with sigint_blocked_for_children():
            async with get_client() as client:  # in ephemeral mode this starts Prefect's temporary server
                await client.hello()
            where = api_url or f"temporary server {client.api_url} (ephemeral mode)"
        console.print(f"[bold]prefect[/]  API: {where}, ready in {time.monotonic() - t0:.1f} s")
        stats = await env.wait_fleet()
        connect = env.connect_seconds
        console.print(f"[bold]fleet[/]    {stats.connected:,}/{stats.total:,} simulated devices connected over MQTT "
                      f"({connect:.1f} s after provisioning)")  # fmt: skip
        if stats.connected != stats.total:
            raise RuntimeError(f"only {stats.connected} of {stats.total} devices connected")
        t0 = time.monotonic()
        jobs = await env.tag()
        console.print(f"[bold]tags[/]     building 43/44 (halves), ring canary/wave1/wave2 (1 % / 9 % / 90 %): "
                      f"{jobs} twin-update jobs in {time.monotonic() - t0:.1f} s")  # fmt: skip
        conn = env.connection
        ran_from = time.monotonic()
        with tags(DEMO_TAG):
            for index, scenario in enumerate(plan, 1):
                partial = not set(scenario.needs) <= {s.key for s in plan}
                records.append(await _run_scenario(index, len(plan), scenario, conn, console, partial=partial))
        scenario_seconds = time.monotonic() - ran_from
    finally:
        env.stop()
        if main_task is not None:
            loop.remove_signal_handler(signal.SIGTERM)
    console.print("[bold]stopped[/]  fleet and hub; temporary folder removed")
    async with get_client() as client:
        await read_back(client, records)
    wall = time.monotonic() - began
    failed = [r for r in records if not r.ok]
    total_tasks = sum(r.task_runs or 0 for r in records)
    console.print()
    console.print(summary_table(records, title=f"iot-flows demo: {options.devices:,} devices, {len(records)} flow runs"))
    console.print(f"task runs: per scenario, including its subflow runs; {total_tasks} in all, "
                  "independent of the fleet size (the hub's jobs engine fans out, not Prefect)")
    console.print(f"scenarios {scenario_seconds:.1f} s, demo wall time {wall:.1f} s (includes Prefect and fleet start-up)")
    if failed or len(records) != len(plan):
        console.print(f"[red bold]{len(failed)} of {len(plan)} scenarios failed[/]")
    else:
        console.print(f"[green bold]all {len(plan)} scenarios succeeded[/]")
    _hint(console, api_url)
    return 1 if failed or len(records) != len(plan) else 0
