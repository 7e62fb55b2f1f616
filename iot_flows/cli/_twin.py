"""``iot-flows twin show|update``: one device twin (``az iot hub device-twin``).

``update`` merge-patches tags and desired properties (``null`` deletes a key), optionally
only if the twin is unchanged since ``--etag``. Malformed JSON is refused before anything
is sent. Reference: "Understand and use device twins in IoT Hub" (Azure docs).
"""

from __future__ import annotations

from typing import Annotated

import typer

from iot_flows.cli._ops import (
    CaFileOption,
    DesiredOption,
    HubOption,
    HubUrlOption,
    OutputOption,
    ProfileOption,
    TagsOption,
    emit,
    guard,
    run_hub_command,
    twin_patch,
)

__all__ = ["twin_app"]

twin_app = typer.Typer(no_args_is_help=True, help="Device twins: show, update.")

DeviceId = Annotated[str, typer.Argument(help="Device id.", show_default=False)]


@twin_app.command("show")
def show(
    device_id: DeviceId,
    output: OutputOption = None, hub: HubOption = None, hub_url: HubUrlOption = None, profile: ProfileOption = None,
    ca_file: CaFileOption = None,
) -> None:  # fmt: skip
    """Show a device twin: tags, desired and reported properties, etag."""
    emit(run_hub_command(hub, hub_url, profile, ca_file, lambda c: c.get_twin(device_id)), output)


@twin_app.command("update")
@guard
def update(
    device_id: DeviceId,
    desired: DesiredOption = None,
    tags: TagsOption = None,
    etag: Annotated[str, typer.Option("--etag", help="Update only if the twin's etag is still this.")] = "*",
    output: OutputOption = None, hub: HubOption = None, hub_url: HubUrlOption = None, profile: ProfileOption = None,
    ca_file: CaFileOption = None,
) -> None:  # fmt: skip
    """Merge-patch a twin's desired properties and/or tags; prints the updated twin."""
    patch = twin_patch(desired, tags)
    emit(run_hub_command(hub, hub_url, profile, ca_file, lambda c: c.update_twin(device_id, patch, etag=etag)), output)
