"""Twin tasks: one hub operation each (a batch read counts as one operation)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from prefect import task

from iot_flows._exceptions import DeviceNotFoundError
from iot_flows.blocks import HubConnection
from iot_flows.client import HubClient
from iot_flows.tasks._retry import RETRY

__all__ = ["get_twin", "get_twins", "query_twins", "update_twin"]


@task(name="get_twin", **RETRY)
async def get_twin(connection: HubConnection, device_id: str) -> dict[str, Any]:
    """Read one device twin.

    Args:
        connection: the hub.
        device_id: the device.

    Returns:
        The full twin document.

    Raises:
        DeviceNotFoundError: unknown device (not retried).
    """
    async with connection.get_client() as hub:
        return await hub.get_twin(device_id)


@task(name="get_twins", **RETRY)
async def get_twins(connection: HubConnection, device_ids: list[str], concurrency: int = 32) -> dict[str, Any]:
    """Read many twins in one task (never one task per device).

    Against an iot-flows hub, whose queries read their own writes, by ``deviceId IN [...]``
    queries (200 ids each); against Azure IoT Hub, where queries lag by minutes, by GET
    twin with bounded concurrency (exact).

    Returns:
        ``{device_id: twin}``; devices that no longer exist map to ``None``.
    """
    sem = asyncio.Semaphore(concurrency)
    out: dict[str, Any] = {}
    async with connection.get_client() as hub:
        by_query = await _twins_by_query(hub, device_ids)
        if by_query is not None:
            return by_query

        async def one(device_id: str) -> None:
            async with sem:
                try:
                    out[device_id] = await hub.get_twin(device_id)
                except DeviceNotFoundError:
                    out[device_id] = None

        await asyncio.gather(*(one(d) for d in device_ids))
    return out


#: Device ids per ``deviceId IN [...]`` query (well under the 8 KB query-text limit).
QUERY_CHUNK = 200
_AZURE_HOSTS = (".azure-devices.net", ".azure-devices.cn", ".azure-devices.us", ".azure-devices.de")
_SAFE_ID = re.compile(r"^[A-Za-z0-9\-.:_@#$%()*+,;=!]+$")
_lagging: set[str] = set()  # base URLs whose queries were seen not to read their own writes


async def _twins_by_query(hub: HubClient, device_ids: list[str]) -> dict[str, Any] | None:
    """Read twins with ``deviceId IN [...]`` queries when the hub reads its own writes.

    An iot-flows hub marks its query answers ``read-your-writes``: 500 twins in 3 requests
    instead of 500 GETs. Azure IoT Hub (whose queries lag by minutes) is never asked: None,
    and the caller GETs each twin, as before.
    """
    base = hub.base_url
    host = base.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0].lower()
    if not device_ids or base in _lagging or host.endswith(_AZURE_HOSTS):
        return None
    if not all(_SAFE_ID.match(d) for d in device_ids):
        return None  # ids that need quoting in the query language: GET them
    out: dict[str, Any] = {}
    for start in range(0, len(device_ids), QUERY_CHUNK):
        chunk = device_ids[start : start + QUERY_CHUNK]
        text = "SELECT * FROM devices WHERE deviceId IN [" + ", ".join(f"'{d}'" for d in chunk) + "]"
        continuation: str | None = None
        while True:
            page = await hub.query_page(text, continuation=continuation, page_size=len(chunk))
            if not page.read_your_writes:
                _lagging.add(base)
                return None
            for twin in page.items:
                out[twin["deviceId"]] = twin
            continuation = page.continuation
            if not continuation:
                break
    return {d: out.get(d) for d in device_ids}


@task(name="update_twin", **RETRY)
async def update_twin(connection: HubConnection, device_id: str, patch: dict[str, Any], etag: str = "*") -> dict[str, Any]:
    """Merge-patch tags and/or desired properties of one twin; returns the updated twin.

    Raises:
        PreconditionFailedError: ``etag`` is stale (not retried).
    """
    async with connection.get_client() as hub:
        return await hub.update_twin(device_id, patch, etag=etag)


@task(name="query_twins", **RETRY)
async def query_twins(connection: HubConnection, query: str, page_size: int = 100) -> list[dict[str, Any]]:
    """Run an IoT Hub query, following continuation tokens to the end.

    Example:
        ``await query_twins(conn, "SELECT * FROM devices WHERE tags.building = '43'")``
    """
    async with connection.get_client() as hub:
        return await hub.query_all(query, page_size=page_size)
