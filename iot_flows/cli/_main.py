"""``iot-flows`` command line: ``hub serve``, ``fleet simulate``, ``demo``, and the operator
verbs ``device``, ``twin``, ``query``, ``method``, ``job``, ``run``.

Every option is generated from a settings model in :mod:`iot_flows._settings` (see
:mod:`iot_flows.cli._options`): a flag beats its ``IOT_FLOWS_*`` environment variable,
which beats the default.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import typer

from iot_flows._gc import tune_for_serving
from iot_flows._limits import raise_open_files_limit
from iot_flows._settings import DEFAULT_PROFILE, HubSettings
from iot_flows.cli._demo import demo
from iot_flows.cli._device import device_app
from iot_flows.cli._fleet import fleet_app
from iot_flows.cli._job import job_app
from iot_flows.cli._method import method_app
from iot_flows.cli._options import settings_options
from iot_flows.cli._profile import HubProfile, default_profile_path, write_profile
from iot_flows.cli._query import query
from iot_flows.cli._run import run
from iot_flows.cli._twin import twin_app

app = typer.Typer(no_args_is_help=True, help="IoT fleet operations as Prefect flows.")
hub_app = typer.Typer(no_args_is_help=True, help="Run the bundled IoT Hub-compatible hub.")
app.add_typer(hub_app, name="hub")
app.add_typer(fleet_app, name="fleet")
app.command("demo")(demo)
# Operator verbs, named after `az iot hub`'s (issue 14).
app.add_typer(device_app, name="device")
app.add_typer(twin_app, name="twin")
app.command("query")(query)
app.add_typer(method_app, name="method")
app.add_typer(job_app, name="job")
app.command("run")(run)


def program() -> str:
    """How the user ran ``iot-flows`` (``.venv/bin/iot-flows`` from the repo), for printed commands."""
    argv0 = sys.argv[0] if sys.argv else ""
    if Path(argv0).name != "iot-flows":
        return "iot-flows"
    path = Path(argv0)
    if path.is_absolute():
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return argv0
    return argv0


def next_commands(profile: HubProfile, profile_path: Path) -> list[str]:
    """The commands to run next against this hub, exactly as they can be pasted."""
    cli = program()
    anywhere = str(Path(cli).resolve()) if "/" in cli else cli  # "from anywhere": not relative to this folder
    default = profile_path.resolve() == DEFAULT_PROFILE.resolve()
    where = "" if default else f" --profile {shlex.quote(str(profile_path))}"
    trust = f" --ca-file {shlex.quote(profile.ca_file)}" if profile.ca_file else ""
    return [
        f"{cli} fleet simulate --count 100{where}",
        f"{shlex.quote(anywhere)} fleet simulate --count 100 --hub {shlex.quote(profile.connection_string)}"
        f" --hub-url {profile.base_url} --mqtt-host {profile.mqtt_host} --mqtt-port {profile.mqtt_port} --no-tls{trust}",
    ]


async def _serve_until_signal(settings: HubSettings) -> None:
    from iot_flows._exceptions import HubError
    from iot_flows.hub import Hub, ListenError
    from iot_flows.store import StoreConfigError

    hub = Hub(settings)
    # Before "ready" is printed: a Ctrl-C that follows it at once is a clean stop (exit 0),
    # not asyncio.Runner's default KeyboardInterrupt (exit 130).
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await hub.start()
    except (StoreConfigError, HubError, ListenError) as exc:  # bad --db, unreachable PostgreSQL, port in use: one line
        typer.echo(f"iot-flows hub: {exc}", err=True)
        raise typer.Exit(2) from None
    tune_for_serving()  # this process is the hub: fewer collector passes (iot_flows._gc)
    profile = HubProfile.of(hub)
    profile_path = Path(settings.profile) if settings.profile else default_profile_path(settings.db)
    write_profile(profile_path, profile)
    typer.echo(f"iot-flows hub '{hub.settings.hostname}' ready")
    typer.echo(f"  MQTT  : {hub.settings.host}:{hub.mqtt_port}")
    if hub.mqtts_port:
        typer.echo(f"  MQTTS : {hub.settings.host}:{hub.mqtts_port}")
    typer.echo(f"  REST  : {hub.base_url}")
    typer.echo(f"  db    : {hub.settings.db}")
    typer.echo(f"  profile: {profile_path} (how the other commands find this hub)")
    if hub.cluster is not None:
        typer.echo(f"  node  : {hub.cluster.node_id} on {hub.cluster.bus.url}")
    typer.echo(f"Service connection string:\n{hub.connection_string()}", color=False)
    first, explicit = next_commands(profile, profile_path)
    typer.echo(f"Next, in another terminal in this folder:\n  {first}\nor from anywhere:\n  {explicit}", color=False)
    try:
        await stop.wait()
    finally:
        typer.echo("shutting down")
        await hub.stop()


@hub_app.command("serve")
@settings_options(settings=HubSettings)
def serve(settings: HubSettings) -> None:
    """Serve Azure IoT Hub's device MQTT dialect and service REST API."""
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise typer.BadParameter("--tls-cert and --tls-key go together")
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise_open_files_limit()  # one socket per connected device
    from iot_flows.hub.cluster import ClusterError

    try:
        run_event_loop(_serve_until_signal(settings), settings.loop)
    except ClusterError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def run_event_loop(coro: Coroutine[Any, Any, None], kind: str) -> None:
    """``asyncio.run(coro)`` on uvloop when ``kind`` is uvloop, or auto and uvloop is installed.

    uvloop halves the hub's per-packet overhead (``./scripts/bench``: method jobs, connects).

    Raises:
        typer.BadParameter: ``--loop uvloop`` without uvloop installed.
    """
    if kind != "asyncio":
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                coro.close()
                raise typer.BadParameter("--loop uvloop needs uvloop: pip install uvloop (or iot-flows[hub])") from None
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(coro)
            return
    asyncio.run(coro)


def main() -> None:
    """The ``iot-flows`` console script."""
    app()
