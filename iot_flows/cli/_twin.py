"""``iot-flows twin show|update``: one device twin (``az iot hub device-twin``).

``update`` merge-patches tags and desired properties (``null`` deletes a key), optionally
only if the twin is unchanged since ``--etag``. Malformed JSON is refused before anything
is sent. Reference: "Understand and use device twins in IoT Hub" (Azure docs).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from iot_flows.cli._ops import (
    HubOption,
    HubUrlOption,
    OutputOption,
    ProfileOption,
    UsageProblem,
    emit,
    guard,
    parse_json_object,
    run_hub_command,
)

__all__ = ["twin_app"]

twin_app = typer.Typer(no_args_is_help=True, help="Device twins: show, update.")

DeviceId = Annotated[str, typer.Argument(help="Device id.", show_default=False)]


@twin_app.command("show")
def show(
    device_id: DeviceId,
    output: OutputOption = None, hub: HubOption = None, hub_url: HubUrlOption = None, profile: ProfileOption = None,
) -> None:  # fmt: skip
    """Show a device twin: tags, desired and reported properties, etag."""
    emit(run_hub_command(hub, hub_url, profile, lambda c: c.get_twin(device_id)), output)


@twin_app.command("update")
@guard
def update(
    device_id: DeviceId,
    desired: Annotated[str | None, typer.Option("--desired", help="JSON object merged into properties.desired.")] = None,
    tags: Annotated[str | None, typer.Option("--tags", help="JSON object merged into tags.")] = None,
    etag: Annotated[str, typer.Option("--etag", help="Update only if the twin's etag is still this.")] = "*",
    output: OutputOption = None, hub: HubOption = None, hub_url: HubUrlOption = None, profile: ProfileOption = None,
) -> None:  # fmt: skip
    """Merge-patch a twin's desired properties and/or tags; prints the updated twin."""
    patch: dict[str, Any] = {}
    if (value := parse_json_object(tags, "--tags")) is not None:
        patch["tags"] = value
    if (value := parse_json_object(desired, "--desired")) is not None:
        patch["properties"] = {"desired": value}
    if not patch:
        raise UsageProblem("nothing to update: pass --desired '{...}' and/or --tags '{...}'")
    emit(run_hub_command(hub, hub_url, profile, lambda c: c.update_twin(device_id, patch, etag=etag)), output)
