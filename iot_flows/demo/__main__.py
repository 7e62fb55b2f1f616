"""``python -m iot_flows.demo``: see :mod:`iot_flows.demo`."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

QUICK_DEVICES = 100


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="./scripts/demo",
        description="An embedded hub, a simulated fleet over MQTT, and every seed scenario as a Prefect flow run.",
        epilog="Watch the runs in the Prefect UI: run `.venv/bin/prefect server start` in another terminal and "
        "`export PREFECT_API_URL=http://127.0.0.1:4200/api` before ./scripts/demo.",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--devices", type=int, default=1000, metavar="N", help="simulated devices (default 1000)")
    size.add_argument("--quick", action="store_true", help=f"{QUICK_DEVICES} devices, for a fast run")
    parser.add_argument("--only", action="append", default=[], metavar="SCENARIO",
                        help="run only this scenario (repeatable), e.g. --only lock-doors; a scenario that reads what "
                        "an omitted one writes is then checked for state and device count only")  # fmt: skip
    parser.add_argument("--verbose", action="store_true", help="also show Prefect's flow and task logs")
    args = parser.parse_args(argv)
    if args.quick:
        args.devices = QUICK_DEVICES
    if args.devices < 10:
        parser.error("--devices must be at least 10")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    # Before Prefect is imported (it reads its settings and logging options once):
    if not args.verbose:
        # Flow and task logs still go to the API (and the UI); the terminal gets one line per scenario.
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    # The temporary server of ephemeral mode would post a heartbeat to prefect.io (an error line
    # when offline) and race its own migrations for the SQLite lock ("database is locked").
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # On a fresh machine that server first creates and migrates its database: 20-30 s on two
    # cores while the fleet connects, past Prefect's default start-up timeout of 20 s.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    from rich.console import Console

    from iot_flows.demo._env import FleetLayout
    from iot_flows.demo._run import DemoOptions, run_demo
    from iot_flows.demo._scenarios import scenarios

    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 120))  # logs and CI: keep the summary table on one line per row

    known = {s.key for s in scenarios(FleetLayout(args.devices))}
    unknown = sorted(set(args.only) - known)
    if unknown:
        console.print(f"[red]unknown scenario {', '.join(unknown)}[/]; known: {', '.join(sorted(known))}")
        return 2
    try:
        return asyncio.run(run_demo(DemoOptions(devices=args.devices, only=tuple(args.only)), console))
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("[yellow]interrupted: fleet and hub stopped[/]")
        return 130
    except Exception as exc:  # noqa: BLE001 - one readable line, not a traceback, for a demo
        console.print(f"[red bold]demo failed:[/] {type(exc).__name__}: {exc}")
        if args.verbose:
            console.print_exception()
        return 1


if __name__ == "__main__":
    sys.exit(main())
