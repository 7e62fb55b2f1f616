"""``iot-flows`` command line: ``iot-flows hub serve`` (more commands join as they land)."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Annotated

import typer

from iot_flows.cli._fleet import fleet_app

app = typer.Typer(no_args_is_help=True, add_completion=False, help="IoT fleet operations as Prefect flows.")
hub_app = typer.Typer(no_args_is_help=True, help="Run the bundled IoT Hub-compatible hub.")
app.add_typer(hub_app, name="hub")
app.add_typer(fleet_app, name="fleet")


async def _serve_until_signal(settings: "object") -> None:
    from iot_flows.hub import Hub

    from iot_flows._exceptions import HubError
    from iot_flows.store import StoreConfigError

    hub = Hub(settings)  # type: ignore[arg-type]
    try:
        await hub.start()
    except (StoreConfigError, HubError) as exc:  # bad --db, unreachable PostgreSQL: one line
        typer.echo(f"iot-flows hub: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"iot-flows hub '{hub.settings.hostname}' ready")
    typer.echo(f"  MQTT  : {hub.settings.host}:{hub.mqtt_port}")
    if hub.mqtts_port:
        typer.echo(f"  MQTTS : {hub.settings.host}:{hub.mqtts_port}")
    typer.echo(f"  REST  : {hub.base_url}")
    typer.echo(f"  db    : {hub.settings.db}")
    typer.echo(f"Service connection string:\n{hub.connection_string()}", color=False)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        typer.echo("shutting down")
        await hub.stop()


@hub_app.command("serve")
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    hostname: Annotated[
        str, typer.Option(help="The hub's HostName (SAS 'sr', MQTT usernames); must contain a '.' for C SDK firmware.")
    ] = "127.0.0.1",
    mqtt_port: Annotated[int, typer.Option(help="Plain MQTT port.")] = 1883,
    http_port: Annotated[int, typer.Option(help="Service REST API port.")] = 8080,
    mqtts_port: Annotated[int, typer.Option(help="MQTT over TLS port (with --tls-cert/--tls-key).")] = 8883,
    db: Annotated[
        str,
        typer.Option(help="SQLite database file (or sqlite:///path), or postgresql://user@host:port/dbname."),
    ] = "iot-flows-hub.db",
    tls_cert: Annotated[Path | None, typer.Option(help="PEM certificate (chain) for TLS.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key for TLS.")] = None,
    max_concurrent_jobs: Annotated[int, typer.Option(help="Active jobs at once (Azure S1: 1).")] = 10,
    job_device_concurrency: Annotated[int, typer.Option(help="In-flight device operations per job.")] = 1000,
    log_level: Annotated[str, typer.Option(help="Python log level.")] = "WARNING",
) -> None:
    """Serve Azure IoT Hub's device MQTT dialect and service REST API."""
    from iot_flows.hub import HubSettings
    from iot_flows.jobs import JobSettings

    if (tls_cert is None) != (tls_key is None):
        raise typer.BadParameter("--tls-cert and --tls-key go together")
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = HubSettings(
        host=host,
        hostname=hostname,
        mqtt_port=mqtt_port,
        http_port=http_port,
        mqtts_port=mqtts_port,
        db=str(db),
        tls_cert=str(tls_cert) if tls_cert else None,
        tls_key=str(tls_key) if tls_key else None,
        jobs=JobSettings(max_concurrent_jobs=max_concurrent_jobs, device_concurrency=job_device_concurrency),
    )
    asyncio.run(_serve_until_signal(settings))


def main() -> None:
    app()
