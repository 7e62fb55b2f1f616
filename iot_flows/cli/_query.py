"""``iot-flows query "SELECT ..."``: IoT Hub's query language over twins and jobs
(``az iot hub query -q``). Every page is read (``x-ms-continuation``) unless ``--top``
stops earlier. Reference: "IoT Hub query language for device and module twins, jobs".
"""

from __future__ import annotations

from typing import Annotated

import typer

from iot_flows.cli._ops import CaFileOption, HubOption, HubUrlOption, OutputOption, ProfileOption, emit, run_hub_command

__all__ = ["query"]


def query(
    query_text: Annotated[str, typer.Argument(metavar="QUERY", help="e.g. \"SELECT * FROM devices WHERE tags.building = '43'\"")],
    top: Annotated[int | None, typer.Option("--top", min=1, help="At most this many results.")] = None,
    page_size: Annotated[int, typer.Option("--page-size", min=1, max=1000, help="Results per request (x-ms-max-item-count).")] = 100,
    output: OutputOption = None, hub: HubOption = None, hub_url: HubUrlOption = None, profile: ProfileOption = None,
    ca_file: CaFileOption = None,
) -> None:  # fmt: skip
    """Run a query over device twins (FROM devices) or job records (FROM devices.jobs)."""
    items = run_hub_command(hub, hub_url, profile, ca_file, lambda c: c.query_top(query_text, top=top, page_size=page_size))
    columns = None
    if items and all(isinstance(i, dict) and "deviceId" in i and "properties" in i for i in items):
        columns = ["deviceId", "status", "connectionState", "tags"]  # twins: the table stays readable
    emit(items, output, columns=columns)
