"""Twin tasks: one hub operation each (a batch read counts as one operation)."""

from __future__ import annotations

import asyncio
from typing import Any

from prefect import task

from iot_flows._exceptions import DeviceNotFoundError
from iot_flows.blocks import HubConnection
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
    """Read many twins with bounded concurrency in one task (never one task per device).

    Confirmation through GET twin is exact on Azure too, where queries lag by minutes.

    Returns:
        ``{device_id: twin}``; devices that no longer exist map to ``None``.
    """
    sem = asyncio.Semaphore(concurrency)
    out: dict[str, Any] = {}
    async with connection.get_client() as hub:

        async def one(device_id: str) -> None:
            async with sem:
                try:
                    out[device_id] = await hub.get_twin(device_id)
                except DeviceNotFoundError:
                    out[device_id] = None

        await asyncio.gather(*(one(d) for d in device_ids))
    return out


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
