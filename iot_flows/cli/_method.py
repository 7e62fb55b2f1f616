"""``iot-flows method invoke DEVICE METHOD``: call a direct method on one device
(``az iot hub invoke-device-method``); prints the device's status and payload.

Exit code 0 only when the device answered with a 2xx status; a device that is not
connected is ``DeviceNotOnline (404103)``. Reference: "Understand and invoke direct methods".
"""

from __future__ import annotations

from typing import Annotated

import typer

from iot_flows.cli._ops import (
    CaFileOption,
    HubOption,
    HubUrlOption,
    OutputOption,
    ProfileOption,
    emit,
    guard,
    parse_json,
    run_hub_command,
)

__all__ = ["method_app"]

method_app = typer.Typer(no_args_is_help=True, help="Direct methods: invoke.")


@method_app.command("invoke")
@guard
def invoke(
    device_id: Annotated[str, typer.Argument(metavar="DEVICE", help="Device id.")],
    method_name: Annotated[str, typer.Argument(metavar="METHOD", help="Method name, e.g. reboot.")],
    payload: Annotated[str | None, typer.Option("--payload", help="JSON payload (default: null).")] = None,
    timeout: Annotated[int, typer.Option("--timeout", min=5, max=300, help="Seconds to wait for the device's answer.")] = 30,
    connect_timeout: Annotated[int, typer.Option("--connect-timeout", min=0, max=300, help="Seconds to wait for the device to connect.")] = 0,
    output: OutputOption = None, hub: HubOption = None, hub_url: HubUrlOption = None, profile: ProfileOption = None,
    ca_file: CaFileOption = None,
) -> None:  # fmt: skip
    """Invoke METHOD on DEVICE and print {"status": ..., "payload": ...}."""
    body = parse_json(payload, "--payload")
    result = run_hub_command(
        hub, hub_url, profile, ca_file,
        lambda c: c.invoke_device_method(device_id, method_name, body, response_timeout=timeout, connect_timeout=connect_timeout),
    )  # fmt: skip
    emit({"status": result.status, "payload": result.payload}, output)
    if not 200 <= result.status < 300:
        typer.echo(f"error: the device answered status {result.status}", err=True)
        raise typer.Exit(1)
