"""Device identity registry endpoints of :class:`~iot_flows.client.HubClient`.

``/devices/{id}`` (get, create, replace, delete), the bulk registry operation and the
enable/disable verb, as IoT Hub's service REST contract defines them
(docs/iothub-reference.md §3).
"""

from __future__ import annotations

from iot_flows._types import JsonObject
from iot_flows.client._conditions import MAX_BULK_DEVICES, chunks
from iot_flows.client._session import HubSession, _error_from_response, _path, _quoted

__all__ = ["RegistryEndpoints"]


class RegistryEndpoints(HubSession):
    """The registry half of :class:`~iot_flows.client.HubClient` (device identities)."""

    # ---- registry ---------------------------------------------------------------------
    async def get_device(self, device_id: str) -> JsonObject:
        """The device identity (``GET /devices/{id}``): ``deviceId``, ``etag``, ``status``,
        ``authentication``, ``connectionState``... as IoT Hub's registry returns it. The id is
        percent-encoded in the path (docs/service-client.md §1).

        Raises:
            DeviceNotFoundError: 404001, no such device.
            TransportError: the hub could not be reached or the connection failed.
        """
        return (await self.request("GET", _path("devices", device_id))).json()  # type: ignore[no-any-return]

    async def create_device(
        self, device_id: str, *, status: str = "enabled", primary_key: str = "", secondary_key: str = ""
    ) -> JsonObject:
        """Create a device identity with SAS authentication (``PUT /devices/{id}``).

        ``status`` is ``enabled`` or ``disabled``; empty keys let the hub generate base64
        keys. Returns the created identity, keys and ``etag`` included.

        Raises:
            DeviceAlreadyExistsError: 409001, the id is taken.
            BadRequestError: an invalid id, status or key (docs/azure-contract.md §3 limits).
        """
        body = {
            "deviceId": device_id,
            "status": status,
            "authentication": {"type": "sas", "symmetricKey": {"primaryKey": primary_key, "secondaryKey": secondary_key}},
        }
        return (await self.request("PUT", _path("devices", device_id), json_body=body)).json()  # type: ignore[no-any-return]

    async def update_device(self, device: JsonObject, *, etag: str = "*") -> JsonObject:
        """Replace a device identity (``PUT /devices/{id}`` with ``If-Match``); ``device`` is the
        identity as :meth:`get_device` returns it, changed. ``etag="*"`` overwrites whatever is
        stored (docs/azure-contract.md §7). Returns the stored identity with its new ``etag``.

        Raises:
            DeviceNotFoundError: 404001, no such device.
            PreconditionFailedError: 412, ``etag`` does not match the stored identity.
        """
        response = await self.request(
            "PUT", _path("devices", device["deviceId"]), json_body=device, headers={"If-Match": _quoted(etag)}
        )
        return response.json()  # type: ignore[no-any-return]

    async def delete_device(self, device_id: str, *, etag: str = "*") -> None:
        """Delete a device identity and its twin (``DELETE /devices/{id}`` with ``If-Match``;
        docs/azure-contract.md §7).

        Raises:
            DeviceNotFoundError: 404001, no such device.
            PreconditionFailedError: 412, ``etag`` does not match.
        """
        await self.request("DELETE", _path("devices", device_id), headers={"If-Match": _quoted(etag)})

    async def bulk_devices(self, items: list[JsonObject]) -> JsonObject:
        """Azure's bulk registry operation, sent as calls of at most 100 items each.

        Per-device failures are data: the hub answers 400 with ``isSuccessful: false``
        and an ``errors`` list, which is returned rather than raised. Results of several
        calls are merged: ``{"isSuccessful": bool, "errors": [...], "warnings": [...]}``.
        """
        merged: JsonObject = {"isSuccessful": True, "errors": [], "warnings": []}
        for batch in chunks(items, MAX_BULK_DEVICES):
            response = await self.request("POST", "/devices", json_body=batch, allow_statuses=(400,))
            body = response.json()
            if response.status_code == 400 and not (isinstance(body, dict) and "isSuccessful" in body):
                raise _error_from_response(response)
            if len(items) <= MAX_BULK_DEVICES:
                return body  # type: ignore[no-any-return]
            merged["isSuccessful"] = merged["isSuccessful"] and bool(body.get("isSuccessful"))
            merged["errors"] += body.get("errors") or []
            merged["warnings"] += body.get("warnings") or []
        return merged

    async def set_device_status(self, device_id: str, status: str, *, reason: str | None = None) -> JsonObject:
        """Enable or disable a device identity (``status`` ``enabled``/``disabled``), keeping
        its keys: read, change ``status``, write back under the read ``etag``.

        Raises:
            DeviceNotFoundError: no such device; PreconditionFailedError: changed meanwhile.
        """
        device = await self.get_device(device_id)
        device["status"] = status
        if reason is not None:
            device["statusReason"] = reason
        return await self.update_device(device, etag=str(device.get("etag") or "*"))

