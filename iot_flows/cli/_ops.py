"""What every operator command shares: finding the hub, printing results, reporting errors.

The hub is found as ``az iot hub`` users expect, first match wins:

1. ``--hub "<service connection string>"`` (env ``IOT_FLOWS_HUB_CONNECTION_STRING``), with
   ``--hub-url`` (env ``IOT_FLOWS_HUB_URL``) for the REST address (default ``https://HostName``,
   Azure IoT Hub; the local profile's address when it names the same hub);
2. a saved ``HubConnection`` block named by ``IOT_FLOWS_HUB_CONNECTION``;
3. the profile ``iot-flows hub serve`` wrote in this folder (``.iot-flows/hub.json``).

Results print as JSON (``--output json``, the default when stdout is not a terminal) or as
a table (``--output table``, the default on a terminal). An error prints one line,
``error: <ErrorName> (<errorCode>): <message>``, on stderr and exits 1 (2 for bad input
caught before anything is sent).
"""

from __future__ import annotations

import asyncio
import enum
import functools
import json
import sys
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from iot_flows._settings import ClientSettings

__all__ = [
    "CaFileOption",
    "DesiredOption",
    "HubOption",
    "HubUrlOption",
    "Output",
    "OutputOption",
    "ProfileOption",
    "emit",
    "fail",
    "guard",
    "open_client",
    "resolve",
    "parse_json",
    "parse_json_object",
    "run_hub_command",
    "TagsOption",
    "UsageProblem",
    "twin_patch",
]

T = TypeVar("T")


class Output(str, enum.Enum):
    """``--output``: ``json`` (for scripts) or ``table`` (for people)."""

    json = "json"
    table = "table"


OutputOption = Annotated[
    Output | None,
    typer.Option("--output", "-o", help="json or table (default: table on a terminal, json when piped)."),
]
HubOption = Annotated[
    str | None,
    typer.Option(
        "--hub",
        help="Service connection string (with SharedAccessKeyName); default: the saved block, then the profile"
        " (env IOT_FLOWS_HUB_CONNECTION_STRING).",
    ),
]
HubUrlOption = Annotated[
    str | None,
    typer.Option(
        "--hub-url",
        help="Service REST base URL; default: the profile's when its HostName matches, else https://HostName"
        " (env IOT_FLOWS_HUB_URL).",
    ),
]
ProfileOption = Annotated[
    str | None,
    typer.Option("--profile", help="The connection profile `hub serve` wrote (env IOT_FLOWS_HUB_PROFILE)."),
]
CaFileOption = Annotated[
    str | None,
    typer.Option(
        "--ca-file",
        help="CA certificate (PEM) to verify the hub's HTTPS; default: the profile's for a self-signed"
        " --tls-cert, else the system's (env IOT_FLOWS_HUB_CA_FILE).",
    ),
]


class UsageProblem(Exception):
    """Bad input found before anything was sent to the hub (exit code 2)."""


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` as one line on stderr; return the ``typer.Exit`` to raise."""
    typer.echo(f"error: {' '.join(str(message).split())}", err=True)
    return typer.Exit(code)


def parse_json(text: str | None, option: str) -> Any:
    """``text`` parsed as JSON; a :class:`UsageProblem` naming ``option`` when it is not JSON."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageProblem(f"{option} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None


def parse_json_object(text: str | None, option: str) -> dict[str, Any] | None:
    """Like :func:`parse_json`, but the value must be a JSON object."""
    value = parse_json(text, option)
    if value is not None and not isinstance(value, dict):
        raise UsageProblem(f"{option} must be a JSON object, like '{{\"key\": 1}}'")
    return value


DesiredOption = Annotated[str | None, typer.Option("--desired", help="JSON object merged into properties.desired.")]
TagsOption = Annotated[str | None, typer.Option("--tags", help="JSON object merged into tags.")]


def twin_patch(desired: str | None, tags: str | None) -> dict[str, Any]:
    """The twin merge patch ``{"properties": {"desired": ...}, "tags": ...}`` from ``--desired``/``--tags``.

    Raises:
        UsageProblem: an option is not a JSON object, or neither was given.
    """
    patch: dict[str, Any] = {}
    if (value := parse_json_object(desired, "--desired")) is not None:
        patch["properties"] = {"desired": value}
    if (value := parse_json_object(tags, "--tags")) is not None:
        patch["tags"] = value
    if not patch:
        raise UsageProblem("nothing to update: pass --desired '{...}' and/or --tags '{...}'")
    return patch


async def _block(name: str) -> tuple[str, str | None, str | bool]:
    from iot_flows.blocks import HubConnection

    try:
        block = await HubConnection.load(name)
    except ValueError as exc:
        raise UsageProblem(f"no saved HubConnection block named {name!r} (IOT_FLOWS_HUB_CONNECTION): {exc}") from None
    return block.connection_string.get_secret_value(), block.base_url, block.ca_file or True


async def resolve(
    hub: str | None, hub_url: str | None, profile: str | None, ca_file: str | None = None
) -> tuple[str, str | None, str | bool]:
    """``(connection string, REST base URL or None for https://HostName, TLS verify)`` of the
    hub the options and environment name (see the module docstring).

    TLS verify: ``--ca-file`` (env ``IOT_FLOWS_HUB_CA_FILE``), else the saved block's
    ``ca_file``, else the profile's (a hub serving a self-signed ``--tls-cert``) when the
    profile serves this connection string, else True (the system's CAs).

    Raises:
        UsageProblem: no hub named anywhere, an unreadable profile, an unknown block name.
    """
    from iot_flows._sas import ConnectionString
    from iot_flows.cli._profile import read_profile

    given = {"connection_string": hub, "url": hub_url, "profile": profile, "ca_file": ca_file}
    settings = ClientSettings(**{k: v for k, v in given.items() if v is not None})  # flag > env > default
    profile_path = Path(settings.profile)
    verify: str | bool = True
    connection_string, hub_url = settings.connection_string, settings.url
    if connection_string is None and settings.connection:
        connection_string, block_url, verify = await _block(settings.connection)
        hub_url = hub_url or block_url
    try:
        found = read_profile(profile_path)
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None
    if connection_string is None and found is not None:
        connection_string = found.connection_string
    if not connection_string:
        raise UsageProblem(
            "no hub: pass --hub \"<service connection string>\" (env IOT_FLOWS_HUB_CONNECTION_STRING), "
            "name a saved HubConnection block (env IOT_FLOWS_HUB_CONNECTION), "
            f"or start `iot-flows hub serve` in this folder first (it writes {profile_path})"
        )
    try:
        parsed = ConnectionString.parse(connection_string)
    except ValueError as exc:
        raise UsageProblem(f"--hub: {exc}") from None
    if not parsed.shared_access_key_name:
        raise UsageProblem("--hub: a service connection string (with SharedAccessKeyName) is needed, not a device's")
    if found is not None and found.serves(connection_string):
        hub_url = hub_url or found.base_url
        if verify is True and found.ca_file:
            verify = found.ca_file
    if settings.ca_file:
        if not Path(settings.ca_file).is_file():
            raise UsageProblem(f"--ca-file: no such file: {settings.ca_file}")
        verify = settings.ca_file
    return connection_string, hub_url, verify


async def open_client(hub: str | None, hub_url: str | None, profile: str | None, ca_file: str | None = None) -> Any:
    """A :class:`~iot_flows.client.HubClient` for the hub :func:`resolve` finds."""
    from iot_flows.client import HubClient

    connection_string, base_url, verify = await resolve(hub, hub_url, profile, ca_file)
    return HubClient(connection_string, base_url=base_url, verify=verify)


def run_hub_command(
    hub: str | None,
    hub_url: str | None,
    profile: str | None,
    ca_file: str | None,
    action: Callable[[Any], Awaitable[T]],
) -> T:
    """Open the client, run ``action(client)``, close it; errors become one line and an exit code."""
    from iot_flows._exceptions import HubError, IoTFlowsError

    async def go() -> T:
        client = await open_client(hub, hub_url, profile, ca_file)
        async with client:
            return await action(client)

    try:
        return asyncio.run(go())
    except UsageProblem as exc:
        raise fail(str(exc), 2) from None
    except HubError as exc:
        raise fail(f"{exc.error_name} ({exc.error_code}): {exc.message}") from None
    except IoTFlowsError as exc:
        raise fail(f"{type(exc).__name__}: {exc}") from None


def guard(func: Callable[..., T]) -> Callable[..., T]:
    """Turn a :class:`UsageProblem` raised while reading options into one line and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return func(*args, **kwargs)
        except UsageProblem as exc:
            raise fail(str(exc), 2) from None

    return wrapper


# ---- output ---------------------------------------------------------------------------------
def _mode(output: Output | None) -> Output:
    if output is not None:
        return output
    return Output.table if sys.stdout.isatty() else Output.json


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _flatten(value: dict[str, Any], prefix: str = "", depth: int = 3) -> Iterable[tuple[str, Any]]:
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, dict) and item and depth > 1:
            yield from _flatten(item, name + ".", depth - 1)
        else:
            yield name, item


def _pick(item: dict[str, Any], column: str) -> Any:
    value: Any = item
    for part in column.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def emit(result: Any, output: Output | None, *, columns: list[str] | None = None, title: str | None = None,
         headers: dict[str, str] | None = None) -> None:  # fmt: skip
    """Print ``result``: JSON as is, or a table (a list: one row per item, ``columns`` dotted
    paths, default every key of the first item, headed by ``headers[path]`` or the path; an
    object: one row per flattened key)."""
    if _mode(output) is Output.json:
        typer.echo(json.dumps(result, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, show_lines=False)
    if isinstance(result, list):
        dicts = [r for r in result if isinstance(r, dict)]
        if len(dicts) != len(result):
            table.add_column("value")
            for item in result:
                table.add_row(Text(_cell(item)))
        else:
            cols = columns or (list(dicts[0]) if dicts else ["(no results)"])
            rows = [[_cell(_pick(item, c)) for c in cols] for item in dicts]
            # The first column is the identifier (deviceId, jobId) an operator copies into the
            # next command: never cut it; the other columns give way when the table is too wide.
            names = [(headers or {}).get(c, c) for c in cols]
            key_width = max([len(names[0]), *(len(row[0]) for row in rows)])
            table.add_column(names[0], no_wrap=True, min_width=key_width)
            for name in names[1:]:  # short headers stay whole; long values wrap, never cut
                table.add_column(name, min_width=len(name) if len(name) <= 10 else None, overflow="fold")
            for row in rows:
                table.add_row(*map(Text, row))
    elif isinstance(result, dict):
        table.add_column("property")
        table.add_column("value", overflow="fold")
        for key, value in _flatten(result):
            table.add_row(Text(key), Text(_cell(value)))
    else:
        table.add_column("value")
        table.add_row(Text(_cell(result)))
    Console(width=max(120, Console().width), soft_wrap=False).print(table)
