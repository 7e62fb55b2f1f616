"""``iot-flows fleet simulate``: provision and run a fleet of simulated devices.

::

    iot-flows fleet simulate --count 1000 --hub "HostName=localhost;SharedAccessKeyName=iothubowner;SharedAccessKey=..." \\
        --mqtt-host 127.0.0.1 --mqtt-port 1883 --http-url http://127.0.0.1:8080 --seed 7 \\
        --download-failure-rate 0.05 --churn-rate 0.01 \\
        --tags fleet=sim --spread building=43,44 --spread ring=canary:1,wave1:9,wave2:90

Runs until Ctrl-C (or ``--duration`` seconds), then disconnects every device cleanly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["fleet_app"]

fleet_app = typer.Typer(no_args_is_help=True, help="Simulated device fleets.")

_TIMING = "Timings (seconds)"
_FAULTS = "Fault injection (rates 0..1)"
_CONN = "Connection"
_TAGS = "Twin tags"


def _parse_tags(text: str | None) -> dict[str, str]:
    """``building=43,ring=canary`` -> ``{"building": "43", "ring": "canary"}``."""
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise typer.BadParameter(f"{item!r}: expected NAME=VALUE[,NAME=VALUE...]", param_hint="--tags")
        out[name.strip()] = value.strip()
    return out


def _parse_spread(text: str) -> tuple[str, list[tuple[str, float]]]:
    """``ring=canary:1,wave1:9,wave2:90`` -> ``("ring", [("canary", 1.0), ...])`` (weight 1 when omitted)."""
    name, sep, values = text.partition("=")
    parsed: list[tuple[str, float]] = []
    try:
        for item in filter(None, (part.strip() for part in values.split(","))):
            value, _, weight = item.partition(":")
            parsed.append((value, float(weight) if weight else 1.0))
    except ValueError:
        parsed = []
    if not sep or not name.strip() or not parsed or any(w < 0 for _, w in parsed):
        raise typer.BadParameter(f"{text!r}: expected NAME=VALUE[:WEIGHT],VALUE[:WEIGHT]...", param_hint="--spread")
    return name.strip(), parsed


@fleet_app.command("simulate")
def simulate(
    hub: Annotated[
        str,
        typer.Option(help="Service connection string (with SharedAccessKeyName).", envvar="IOT_FLOWS_HUB_CONNECTION_STRING"),
    ],
    count: Annotated[int, typer.Option("--count", "-n", min=0, help="Number of devices.")] = 100,
    prefix: Annotated[str, typer.Option(help="Device ids are {prefix}-{index:05d}.")] = "sim",
    start_index: Annotated[int, typer.Option(min=0, help="First device index.")] = 0,
    mqtt_host: Annotated[str | None, typer.Option(help="MQTT host (default: HostName).", rich_help_panel=_CONN)] = None,
    mqtt_port: Annotated[int | None, typer.Option(help="MQTT port (default 8883 with TLS, else 1883).", rich_help_panel=_CONN)] = None,
    http_url: Annotated[str | None, typer.Option(help="Service REST base URL (default https://HostName).", rich_help_panel=_CONN)] = None,
    tls: Annotated[bool | None, typer.Option("--tls/--no-tls", help="MQTT over TLS (default: with --ca-file or without --mqtt-host).", rich_help_panel=_CONN)] = None,
    ca_file: Annotated[Path | None, typer.Option(help="CA certificate (PEM) to verify the hub.", rich_help_panel=_CONN)] = None,
    provision: Annotated[bool, typer.Option("--provision/--no-provision", help="Create/update the devices first (bulk API).", rich_help_panel=_CONN)] = True,
    connect_concurrency: Annotated[int, typer.Option(min=1, help="Devices connecting at once.", rich_help_panel=_CONN)] = 256,
    keepalive: Annotated[int, typer.Option(min=5, help="MQTT keep-alive.", rich_help_panel=_CONN)] = 60,
    token_ttl: Annotated[int, typer.Option(min=5, help="Device SAS token lifetime.", rich_help_panel=_CONN)] = 3600,
    seed: Annotated[int, typer.Option(help="Seed for fault injection.")] = 0,
    reboot_seconds: Annotated[float, typer.Option(min=0, rich_help_panel=_TIMING)] = 5.0,
    factory_reset_seconds: Annotated[float, typer.Option(min=0, rich_help_panel=_TIMING)] = 5.0,
    fw_wait_seconds: Annotated[float, typer.Option(min=0, rich_help_panel=_TIMING)] = 2.0,
    fw_download_seconds: Annotated[float, typer.Option(min=0, rich_help_panel=_TIMING)] = 4.0,
    fw_apply_seconds: Annotated[float, typer.Option(min=0, rich_help_panel=_TIMING)] = 4.0,
    fw_reboot_seconds: Annotated[float, typer.Option(min=0, rich_help_panel=_TIMING)] = 0.0,
    config_apply_seconds: Annotated[float, typer.Option(min=0, rich_help_panel=_TIMING)] = 1.0,
    download_failure_rate: Annotated[float, typer.Option(min=0, max=1, rich_help_panel=_FAULTS)] = 0.0,
    apply_failure_rate: Annotated[float, typer.Option(min=0, max=1, rich_help_panel=_FAULTS)] = 0.0,
    hang_rate: Annotated[float, typer.Option(min=0, max=1, help="Updates accepted but never reported.", rich_help_panel=_FAULTS)] = 0.0,
    config_failure_rate: Annotated[float, typer.Option(min=0, max=1, rich_help_panel=_FAULTS)] = 0.0,
    slow_rate: Annotated[float, typer.Option(min=0, max=1, help="Share of slow responders.", rich_help_panel=_FAULTS)] = 0.0,
    churn_rate: Annotated[float, typer.Option(min=0, max=1, help="Share of devices dropped per churn interval.", rich_help_panel=_FAULTS)] = 0.0,
    churn_interval: Annotated[float, typer.Option(min=0.1, rich_help_panel=_FAULTS)] = 30.0,
    churn_offline_seconds: Annotated[float, typer.Option(min=0, rich_help_panel=_FAULTS)] = 5.0,
    tags: Annotated[str | None, typer.Option(help="Twin tags on every device: building=43,ring=canary.", rich_help_panel=_TAGS)] = None,
    spread: Annotated[list[str] | None, typer.Option(help="Spread a tag over id ranges by weight: ring=canary:1,wave1:9,wave2:90 (repeat; each splits the groups of the one before).", rich_help_panel=_TAGS)] = None,
    duration: Annotated[float, typer.Option(min=0, help="Stop after this many seconds (0: until Ctrl-C).")] = 0.0,
    json_stats: Annotated[bool, typer.Option("--json", help="Print the final stats as one JSON line.")] = False,
    log_level: Annotated[str, typer.Option(help="Python log level.")] = "WARNING",
) -> None:
    """Provision COUNT devices, connect them all from this process, run until Ctrl-C."""
    from iot_flows.device import BehaviourConfig, Fleet, spread_tags

    fixed, spreads = _parse_tags(tags), [_parse_spread(text) for text in spread or []]
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        behaviour = BehaviourConfig(
            reboot_seconds=reboot_seconds,
            factory_reset_seconds=factory_reset_seconds,
            fw_wait_seconds=fw_wait_seconds,
            fw_download_seconds=fw_download_seconds,
            fw_apply_seconds=fw_apply_seconds,
            fw_reboot_seconds=fw_reboot_seconds,
            config_apply_seconds=config_apply_seconds,
            download_failure_rate=download_failure_rate,
            apply_failure_rate=apply_failure_rate,
            hang_rate=hang_rate,
            config_failure_rate=config_failure_rate,
            slow_rate=slow_rate,
            churn_rate=churn_rate,
            churn_interval_seconds=churn_interval,
            churn_offline_seconds=churn_offline_seconds,
        )
        fleet = Fleet(
            hub,
            count=count,
            prefix=prefix,
            start_index=start_index,
            mqtt_host=mqtt_host,
            mqtt_port=mqtt_port,
            http_url=http_url,
            tls=tls,
            ca_file=str(ca_file) if ca_file else None,
            seed=seed,
            behaviour=behaviour,
            provision=provision,
            connect_concurrency=connect_concurrency,
            keepalive=keepalive,
            token_ttl=token_ttl,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    tag_map = spread_tags(fleet.device_ids(), fixed, spreads) if fixed or spreads else {}
    code = asyncio.run(_run(fleet, duration, json_stats, tag_map, hub))
    raise typer.Exit(code)


async def _run(fleet: "object", duration: float, json_stats: bool, tags: "dict[str, dict[str, str]] | None" = None, hub: str = "") -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from iot_flows._exceptions import IoTFlowsError
    from iot_flows.device import Fleet, FleetStats, tag_devices

    assert isinstance(fleet, Fleet)
    console = Console(stderr=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    bar = progress.add_task("connected", total=fleet.count, detail="provisioning")

    def show(stats: FleetStats) -> None:
        busy = {k: v for k, v in stats.counters.items() if not k.startswith("method:")}
        detail = f"{stats.failed} failed, {stats.reconnects} reconnects"
        if busy:
            detail += ", " + ", ".join(f"{k}={v}" for k, v in sorted(busy.items()))
        progress.update(bar, completed=stats.connected, detail=detail)

    code = 0
    began = time.perf_counter()
    with progress:
        starting = loop.create_task(fleet.start(progress=show))
        stopping = loop.create_task(stop.wait())
        try:
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if starting.done():
                starting.result()  # raise provisioning / connect errors
                elapsed = time.perf_counter() - began
                if tags:
                    verify: bool | str = fleet.ca_file or True
                    tagged = await tag_devices(hub, tags, base_url=fleet.http_url, verify=verify)
                    progress.console.print(f"tagged {tagged} devices")
                progress.console.print(
                    f"{fleet.connected}/{fleet.count} devices connected in {elapsed:.1f} s "
                    f"({fleet.count / max(elapsed, 1e-9):.0f}/s); Ctrl-C to stop"
                )
                deadline = loop.time() + duration if duration > 0 else None
                while not stop.is_set():
                    show(fleet.stats)
                    timeout = 0.5 if deadline is None else min(0.5, deadline - loop.time())
                    if timeout <= 0:
                        break
                    try:
                        await asyncio.wait_for(stop.wait(), timeout)
                    except TimeoutError:
                        pass
        except IoTFlowsError as exc:
            progress.console.print(f"[red]error:[/red] {exc}")
            code = 1
        finally:
            for task in (starting, stopping):
                task.cancel()
            await asyncio.gather(starting, stopping, return_exceptions=True)
            stats = fleet.stats
            await fleet.stop()
    console.print(f"stopped: {stats}")
    if json_stats:
        print(json.dumps({
            "total": stats.total, "connected_at_stop": stats.connected, "failed": stats.failed,
            "reconnects": stats.reconnects, "counters": stats.counters,
        }), flush=True)  # fmt: skip
    return code
