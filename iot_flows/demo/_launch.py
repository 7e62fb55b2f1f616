"""Launch the demo: Prefect's logging options first, then the hub, the fleet and the scenarios.

:func:`launch` is what ``iot-flows demo``, ``python -m iot_flows.demo`` and ``./scripts/demo``
run (their command line is :mod:`iot_flows.cli`). Prefect is imported only after its logging
options are set (it reads them once, on import).
"""

from __future__ import annotations

import asyncio
import os

from iot_flows._ephemeral import ephemeral_defaults
from iot_flows._limits import BASE_DESCRIPTORS, check_open_files

__all__ = ["QUICK_DEVICES", "launch"]

QUICK_DEVICES = 100


def launch(devices: int, only: tuple[str, ...], *, verbose: bool) -> int:
    """Run the demo; the process exit code (0 only when every scenario succeeded)."""
    # Before Prefect is imported (it reads its settings and logging options once):
    if not verbose:
        # Flow and task logs still go to the API (and the UI); the terminal gets one line per scenario.
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    # The temporary server of ephemeral mode: no heartbeat to prefect.io (an error line offline,
    # and it raced its own migrations for the SQLite lock), time to migrate a fresh database.
    ephemeral_defaults()
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 120))  # logs and CI: keep the summary table on one line per row
    # The hub and the fleet run in separate processes: each holds one socket per device.
    problem = check_open_files(devices + BASE_DESCRIPTORS, f"the demo with {devices:,} devices")
    if problem:
        console.print(f"[red bold]demo cannot start:[/] {problem}", soft_wrap=True)
        return 1

    from iot_flows.demo._env import FleetLayout
    from iot_flows.demo._run import DemoOptions, run_demo
    from iot_flows.demo._scenarios import scenarios

    known = {s.key for s in scenarios(FleetLayout(devices))}
    unknown = sorted(set(only) - known)
    if unknown:
        console.print(f"[red]unknown scenario {', '.join(unknown)}[/]; known: {', '.join(sorted(known))}")
        return 2
    try:
        return asyncio.run(run_demo(DemoOptions(devices=devices, only=only), console))
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("[yellow]interrupted: fleet and hub stopped[/]")
        return 130
    except Exception as exc:  # noqa: BLE001 - one readable line, not a traceback, for a demo
        console.print(f"[red bold]demo failed:[/] {type(exc).__name__}: {exc}")
        if verbose:
            console.print_exception()
        return 1

