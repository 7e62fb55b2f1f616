"""``iot-flows fleet simulate``: provision and run a fleet of simulated devices.

::

    iot-flows fleet simulate --count 1000 --seed 7 --download-failure-rate 0.05 --churn-rate 0.01

uses the hub ``iot-flows hub serve`` started in this folder (its profile); ``--hub
"HostName=...;SharedAccessKeyName=...;SharedAccessKey=..." --hub-url http://...`` names
another. Every option is a field of ``ClientSettings``, ``FleetSettings`` or
``SimulatorSettings`` (:mod:`iot_flows._settings`).

Twin tags: ``--tags building=43,ring=canary`` on every device, ``--spread
ring=canary:1,wave1:9,wave2:90`` over id ranges by weight.

Runs until Ctrl-C (or ``--duration`` seconds), then disconnects every device cleanly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import typer

from iot_flows._limits import BASE_DESCRIPTORS, check_open_files
from iot_flows._settings import ClientSettings, FleetSettings, SimulatorSettings
from iot_flows.cli._options import settings_options
from iot_flows.cli._profile import read_profile

__all__ = ["fleet_app", "resolve_hub"]

fleet_app = typer.Typer(no_args_is_help=True, help="Simulated device fleets.")


@dataclass(frozen=True)
class HubAddress:
    """Where the fleet finds the hub: connection string, REST base URL, MQTT endpoint."""

    connection_string: str
    http_url: str | None
    mqtt_host: str | None
    mqtt_port: int | None
    tls: bool | None
    ca_file: str | None = None


def resolve_hub(client: ClientSettings, fleet: FleetSettings) -> HubAddress:
    """Combine flags/environment with the profile ``hub serve`` wrote.

    The connection string is ``--hub``, else the profile's. Addresses not given come from
    the profile when it describes the same hub (same ``HostName``) and ``--hub-url`` is
    absent or the profile's own; otherwise, with a plain ``http://`` ``--hub-url`` (e.g. a
    load balancer), MQTT defaults to that host, port 1883, no TLS.

    Raises:
        ValueError: no connection string anywhere, or an unreadable profile.
    """
    profile = read_profile(Path(client.profile))
    connection_string = client.connection_string or (profile.connection_string if profile else None)
    if not connection_string:
        raise ValueError(
            f"no hub: pass --hub \"<service connection string>\" (env IOT_FLOWS_HUB_CONNECTION_STRING), "
            f"or start `iot-flows hub serve` in this folder first (it writes {client.profile})"
        )
    http_url, mqtt_host, mqtt_port, tls = client.url, fleet.mqtt_host, fleet.mqtt_port, fleet.tls
    ca_file = fleet.ca_file
    # A --hub-url other than the profile's (a load balancer in front of the node that wrote
    # the profile) is another endpoint: the profile's MQTT address does not apply to it.
    same_endpoint = http_url is None or (profile is not None and http_url.rstrip("/") == profile.base_url.rstrip("/"))
    if profile is not None and profile.serves(connection_string) and same_endpoint:
        http_url = http_url or profile.base_url
        ca_file = ca_file or profile.ca_file  # the hub's own self-signed certificate
        if mqtt_host is None:
            mqtt_host = profile.mqtt_host
            if tls is None:  # --ca-file asks for TLS when the hub serves it
                tls = bool(fleet.ca_file and profile.mqtts_port) or profile.tls
            if tls and not profile.mqtts_port and not profile.tls:
                raise ValueError(
                    f"--tls: the hub in {client.profile} serves no MQTT over TLS (start it with --tls-cert/--tls-key)"
                )
            mqtt_port = mqtt_port or (profile.mqtts_port if tls and profile.mqtts_port else profile.mqtt_port)
    elif http_url and http_url.startswith("http://") and mqtt_host is None:
        mqtt_host = urlsplit(http_url).hostname
        tls = False if tls is None else tls
    return HubAddress(connection_string, http_url, mqtt_host, mqtt_port, tls, ca_file)


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
@settings_options(client=ClientSettings, fleet=FleetSettings, behaviour=SimulatorSettings)
def simulate(client: ClientSettings, fleet: FleetSettings, behaviour: Any) -> None:
    """Provision COUNT devices, connect them all from this process, run until Ctrl-C.

    Without --hub it uses the hub `iot-flows hub serve` started in this folder (its profile).
    """
    from iot_flows.device import BehaviourConfig, Fleet, spread_tags

    fixed, spreads = _parse_tags(fleet.tags), [_parse_spread(text) for text in fleet.spread]
    logging.basicConfig(level=fleet.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        hub = resolve_hub(client, fleet)
        devices = Fleet(
            hub.connection_string,
            count=fleet.count,
            prefix=fleet.prefix,
            start_index=fleet.start_index,
            mqtt_host=hub.mqtt_host,
            mqtt_port=hub.mqtt_port,
            http_url=hub.http_url,
            tls=hub.tls,
            ca_file=hub.ca_file,
            seed=fleet.seed,
            behaviour=BehaviourConfig(**behaviour.model_dump()),
            provision=fleet.provision,
            connect_concurrency=fleet.connect_concurrency,
            keepalive=fleet.keepalive,
            token_ttl=fleet.token_ttl,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    problem = check_open_files(fleet.count + BASE_DESCRIPTORS, f"a fleet of {fleet.count:,} devices")
    if problem:
        typer.secho(f"error: {problem}", err=True, fg="red")
        raise typer.Exit(1)
    tag_map = spread_tags(devices.device_ids(), fixed, spreads) if fixed or spreads else {}
    code = asyncio.run(_run(devices, fleet.duration, fleet.json_stats, tag_map, hub.connection_string))
    raise typer.Exit(code)


async def _run(
    fleet: object, duration: float, json_stats: bool, tags: dict[str, dict[str, str]] | None = None, hub: str = ""
) -> int:
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
    # Piped or logged (no terminal), the live bar draws nothing until the end: a fleet a full
    # hub keeps refusing said nothing at all. There, a plain line whenever the figures change:
    # at most every 5 s while devices are still connecting, every 60 s once all are in.
    said_text, said_at = "", -1e9

    def show(stats: FleetStats) -> None:
        nonlocal said_text, said_at
        busy = {k: v for k, v in stats.counters.items() if not k.startswith("method:")}
        detail = f"{stats.failed} failed, {stats.reconnects} reconnects"
        if busy:
            detail += ", " + ", ".join(f"{k}={v}" for k, v in sorted(busy.items()))
        progress.update(bar, completed=stats.connected, detail=detail)
        if not console.is_terminal:
            text = f"connected {stats.connected}/{fleet.count}: {detail}"
            if stats.last_error:
                text += f"; retrying: {stats.last_error}"
            every = 5.0 if stats.connected < fleet.count else 60.0
            if text != said_text and time.monotonic() - said_at >= every:
                console.print(text, highlight=False, soft_wrap=True)
                said_text, said_at = text, time.monotonic()

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
