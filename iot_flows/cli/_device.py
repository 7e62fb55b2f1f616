"""``iot-flows device list|show|create|delete|enable|disable``: the identity registry.

Named after ``az iot hub device-identity``; every verb goes through
:class:`~iot_flows.client.HubClient`, so it works against Azure IoT Hub and the bundled hub.
Reference: "Understand the identity registry in your IoT hub" (Azure docs).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from iot_flows.cli._ops import CaFileOption, HubOption, HubUrlOption, OutputOption, ProfileOption, emit, run_hub_command

__all__ = ["device_app"]

device_app = typer.Typer(no_args_is_help=True, help="Device identities: list, show, create, delete, enable, disable.")

DeviceId = Annotated[str, typer.Argument(help="Device id.", show_default=False)]
LIST_COLUMNS = ["deviceId", "status", "connectionState", "lastActivityTime", "properties.reported.firmware.currentFwVersion"]
SHOW_COLUMNS = ["deviceId", "status", "connectionState", "etag"]


@device_app.command("list")
def list_devices(
    top: Annotated[int | None, typer.Option("--top", min=1, help="At most this many devices.")] = None,
    output: OutputOption = None, hub: HubOption = None, hub_url: HubUrlOption = None, profile: ProfileOption = None,
    ca_file: CaFileOption = None,
) -> None:  # fmt: skip
    """List the devices (their twins: status, connection state, reported firmware)."""
    devices = run_hub_command(hub, hub_url, profile, ca_file, lambda c: c.list_devices(top=top))
    emit(devices, output, columns=LIST_COLUMNS)


@device_app.command("show")
def show(
    device_id: DeviceId,
    output: OutputOption = None, hub: HubOption = None, hub_url: HubUrlOption = None, profile: ProfileOption = None,
    ca_file: CaFileOption = None,
) -> None:  # fmt: skip
    """Show one device identity (status, keys' type, connection state, etag)."""
    emit(run_hub_command(hub, hub_url, profile, ca_file, lambda c: c.get_device(device_id)), output)


@device_app.command("create")
def create(
    device_id: DeviceId,
    disabled: Annotated[bool, typer.Option("--disabled", help="Create it disabled.")] = False,
    primary_key: Annotated[str, typer.Option("--primary-key", help="Base64 key; default: the hub makes one.")] = "",
    secondary_key: Annotated[str, typer.Option("--secondary-key", help="Base64 key; default: the hub makes one.")] = "",
    output: OutputOption = None, hub: HubOption = None, hub_url: HubUrlOption = None, profile: ProfileOption = None,
    ca_file: CaFileOption = None,
) -> None:  # fmt: skip
    """Register a device with symmetric-key (SAS) authentication."""
    status = "disabled" if disabled else "enabled"
    device = run_hub_command(
        hub, hub_url, profile, ca_file,
        lambda c: c.create_device(device_id, status=status, primary_key=primary_key, secondary_key=secondary_key),
    )  # fmt: skip
    emit(device, output)


@device_app.command("delete")
def delete(
    device_id: DeviceId,
    etag: Annotated[str, typer.Option("--etag", help="Delete only if unchanged since this etag.")] = "*",
    output: OutputOption = None, hub: HubOption = None, hub_url: HubUrlOption = None, profile: ProfileOption = None,
    ca_file: CaFileOption = None,
) -> None:  # fmt: skip
    """Delete a device identity (and its twin)."""

    async def go(client: Any) -> dict[str, Any]:
        await client.delete_device(device_id, etag=etag)
        return {"deviceId": device_id, "deleted": True}

    emit(run_hub_command(hub, hub_url, profile, ca_file, go), output)


def _set_status(
    device_id: str, status: str, reason: str | None, output: Any, hub: Any, hub_url: Any, profile: Any, ca_file: Any
) -> None:
    device = run_hub_command(hub, hub_url, profile, ca_file, lambda c: c.set_device_status(device_id, status, reason=reason))
    emit(device, output, columns=SHOW_COLUMNS)


Reason = Annotated[str | None, typer.Option("--reason", help="statusReason to record.")]


@device_app.command("enable")
def enable(
    device_id: DeviceId, reason: Reason = None,
    output: OutputOption = None, hub: HubOption = None, hub_url: HubUrlOption = None, profile: ProfileOption = None,
    ca_file: CaFileOption = None,
) -> None:  # fmt: skip
    """Let a device connect again."""
    _set_status(device_id, "enabled", reason, output, hub, hub_url, profile, ca_file)


@device_app.command("disable")
def disable(
    device_id: DeviceId, reason: Reason = None,
    output: OutputOption = None, hub: HubOption = None, hub_url: HubUrlOption = None, profile: ProfileOption = None,
    ca_file: CaFileOption = None,
) -> None:  # fmt: skip
    """Refuse the device's connections (the hub drops it if connected)."""
    _set_status(device_id, "disabled", reason, output, hub, hub_url, profile, ca_file)
