"""Bulk provisioning of simulated devices through the registry REST API.

``POST /devices?api-version=2021-04-12`` (Azure's bulk registry operation, at most 100
devices per call) with ``importMode: create``, then ``update`` for the ids that already
exist, through :class:`HubClient` (httpx; errors become the project's typed errors there, once).

Device keys are derived, not stored: ``base64(HMAC-SHA256(service key, device id))``
(and of ``device id + "/secondary"`` for the secondary key). Re-running provisioning
with the same service connection string therefore writes the same keys: existing
devices are reused, devices connected with those keys stay valid, and a simulator
started later with ``provision=False`` can still compute every connection string.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from iot_flows._exceptions import BadRequestError
from iot_flows._sas import ConnectionString
from iot_flows.client import HubClient

__all__ = [
    "MAX_BULK_DEVICES",
    "ProvisionResult",
    "derive_device_key",
    "device_connection_string",
    "provision_devices",
    "spread_tags",
    "tag_devices",
]

#: Azure's limit for one bulk registry call.
MAX_BULK_DEVICES = 100


def _service_cs(hub: str | ConnectionString) -> ConnectionString:
    cs = hub if isinstance(hub, ConnectionString) else ConnectionString.parse(hub)
    if not cs.shared_access_key_name or cs.device_id:
        raise ValueError("provisioning needs a service connection string (with SharedAccessKeyName)")
    return cs


def derive_device_key(service_key: str, device_id: str, *, secondary: bool = False) -> str:
    """The device's symmetric key: ``base64(HMAC-SHA256(service key, device id))``."""
    message = f"{device_id}/secondary" if secondary else device_id
    digest = hmac.new(base64.b64decode(service_key), message.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def device_connection_string(hub: str | ConnectionString, device_id: str) -> str:
    """``HostName=...;DeviceId=...;SharedAccessKey=...`` with the derived primary key."""
    cs = _service_cs(hub)
    key = derive_device_key(cs.shared_access_key, device_id)
    return str(ConnectionString(host_name=cs.host_name, device_id=device_id, shared_access_key=key))


@dataclass(frozen=True, slots=True)
class ProvisionResult:
    """What :func:`provision_devices` did."""

    device_count: int
    calls: int
    seconds: float


async def provision_devices(
    hub: str | ConnectionString,
    device_ids: Sequence[str],
    *,
    base_url: str | None = None,
    verify: bool | str | ssl.SSLContext = True,
    concurrency: int = 4,
    timeout: float = 60.0,
) -> ProvisionResult:
    """Create or update ``device_ids`` (enabled, SAS auth with derived keys), 100 per call.

    Raises the hub's typed error when a call fails, and :class:`BadRequestError` listing
    the first failures when the hub reports per-device errors.
    """
    cs = _service_cs(hub)
    key = cs.shared_access_key
    batches = [list(device_ids[i : i + MAX_BULK_DEVICES]) for i in range(0, len(device_ids), MAX_BULK_DEVICES)]
    started = time.perf_counter()
    semaphore = asyncio.Semaphore(max(1, concurrency))

    def item(device_id: str, mode: str) -> dict[str, object]:
        return {
            "id": device_id,
            "importMode": mode,
            "status": "enabled",
            "authentication": {
                "type": "sas",
                "symmetricKey": {
                    "primaryKey": derive_device_key(key, device_id),
                    "secondaryKey": derive_device_key(key, device_id, secondary=True),
                },
            },
        }

    async def send(client: HubClient, batch: list[str]) -> None:
        # The 2021-04-12 bulk API lists create/update/... but not createOrUpdate (the C# SDK
        # refuses it for bulk calls): create first, then update the ids that already exist.
        errors: list[dict[str, object]] = []
        for mode in ("create", "update"):
            if not batch:
                break
            async with semaphore:
                result = await client.bulk_devices([item(device_id, mode) for device_id in batch])
            failures = result.get("errors") or []
            if not result.get("isSuccessful", False) and not failures:
                raise BadRequestError(f"bulk provisioning ({mode}) failed without per-device errors: {result}")
            exists = "DeviceAlreadyExists" if mode == "create" else None
            batch = [str(e.get("deviceId")) for e in failures if e.get("errorCode") == exists]
            errors += [e for e in failures if e.get("errorCode") != exists]
        if errors:
            raise BadRequestError(f"bulk provisioning failed for {len(errors)} device(s): {errors[:3]}")

    async with HubClient(str(cs), base_url=base_url, verify=verify, timeout=timeout) as client:
        try:
            async with asyncio.TaskGroup() as group:
                for batch in batches:
                    group.create_task(send(client, batch))
        except BaseExceptionGroup as failures:
            first: BaseException = failures
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None  # the typed error, not a group of them
    return ProvisionResult(device_count=len(device_ids), calls=len(batches), seconds=time.perf_counter() - started)


def _shares(count: int, weights: Sequence[float]) -> list[int]:
    """Split ``count`` by ``weights`` (largest remainder); every positive weight gets >= 1 when it can."""
    total = sum(weights) or 1.0
    exact = [count * w / total for w in weights]
    sizes = [int(x) for x in exact]
    for i in sorted(range(len(weights)), key=lambda i: exact[i] - sizes[i], reverse=True)[: count - sum(sizes)]:
        sizes[i] += 1
    for i, w in enumerate(weights):  # a canary of 0.5 % still gets a device
        if w > 0 and sizes[i] == 0:
            donor = max(range(len(sizes)), key=lambda j: sizes[j])
            if sizes[donor] > 1:
                sizes[donor] -= 1
                sizes[i] += 1
    return sizes


def spread_tags(
    device_ids: Sequence[str],
    tags: Mapping[str, Any] | None = None,
    spreads: Sequence[tuple[str, Sequence[tuple[str, float]]]] = (),
) -> dict[str, dict[str, Any]]:
    """Twin tags per device: ``tags`` on every device, each spread over contiguous id ranges.

    ``spreads`` is ``[(tag, [(value, weight), ...]), ...]``; the first spread splits the
    fleet by weight, each further one splits every group of the previous one (so
    ``[("building", [("43", 1), ("44", 1)]), ("ring", [("canary", 1), ("wave1", 9), ("wave2", 90)])]``
    puts a canary ring in both buildings, like the demo).

    Returns:
        ``{device_id: {tag: value}}`` for every device (empty dicts when nothing applies).
    """
    out: dict[str, dict[str, Any]] = {d: dict(tags or {}) for d in device_ids}
    groups: list[list[str]] = [list(device_ids)]
    for name, values in spreads:
        nested: list[list[str]] = []
        for group in groups:
            start = 0
            for (value, _), size in zip(values, _shares(len(group), [w for _, w in values]), strict=True):
                for device_id in group[start : start + size]:
                    out[device_id][name] = value
                nested.append(group[start : start + size])
                start += size
        groups = nested
    return out


async def tag_devices(
    hub: str | ConnectionString,
    tags: Mapping[str, Mapping[str, Any]],
    *,
    base_url: str | None = None,
    verify: bool | str | ssl.SSLContext = True,
    concurrency: int = 16,
    timeout: float = 60.0,
) -> int:
    """Merge ``tags[device_id]`` into each device twin's tags (``PATCH /twins/{id}``, Azure "Update twin").

    Devices with no tags are skipped. Returns how many twins were patched; raises the
    hub's typed error when a call fails.
    """
    cs = _service_cs(hub)
    semaphore = asyncio.Semaphore(max(1, concurrency))
    todo = {device_id: dict(t) for device_id, t in tags.items() if t}

    async with HubClient(str(cs), base_url=base_url, verify=verify, timeout=timeout) as client:

        async def one(device_id: str, patch: dict[str, Any]) -> None:
            async with semaphore:
                await client.update_twin(device_id, {"tags": patch})

        try:
            async with asyncio.TaskGroup() as group:
                for device_id, patch in todo.items():
                    group.create_task(one(device_id, patch))
        except BaseExceptionGroup as failures:
            first: BaseException = failures
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None
    return len(todo)
