"""The identity registry: create, update, delete and bulk-import devices.

Follows the service SDKs' expectations (docs/iothub-reference.md §9.5): keys are generated
when the body has none or empty ones, any base64 key of at least 16 decoded bytes is
accepted, a device without ``status`` is enabled, unknown fields are ignored, and an
id with ``/``, ``#`` or ``+`` (impossible in MQTT topics) is refused.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Callable
from typing import Any

from iot_flows._exceptions import (
    BadRequestError,
    DeviceAlreadyExistsError,
    HubError,
    PreconditionFailedError,
)
from iot_flows._sas import generate_key
from iot_flows.hub._twins import check_if_match, device_not_found
from iot_flows.store import DeviceRecord, HubStore, new_etag
from iot_flows.twin import utc_now

__all__ = ["MAX_BULK_DEVICES", "RegistryService", "validate_device_id"]

#: Azure's bulk registry operation takes at most 100 devices per call.
MAX_BULK_DEVICES = 100
_DEVICE_ID = re.compile(r"^[A-Za-z0-9\-:.%_*?!(),=@;$']{1,128}$")
_IMPORT_MODES = {
    "create", "update", "updateifmatchetag", "createorupdate", "createorupdateifmatchetag",
    "delete", "deleteifmatchetag",
}  # fmt: skip


def validate_device_id(device_id: str) -> None:
    """Raise 400 unless the id is 1-128 chars of IoT Hub's allowed set (no ``/ # +``)."""
    if not isinstance(device_id, str) or not _DEVICE_ID.match(device_id):
        raise BadRequestError(
            f"Invalid device id {device_id!r}: 1-128 ASCII letters, digits or - : . % _ * ? ! ( ) , = @ ; $ '"
        )


def _check_key(key: Any, name: str) -> str:
    if key in (None, ""):
        return generate_key()
    if not isinstance(key, str):
        raise BadRequestError(f"{name} must be a base64 string.")
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequestError(f"{name} is not valid base64.") from None
    if len(raw) < 16:
        raise BadRequestError(f"{name} must decode to at least 16 bytes.")
    return key


def _optional_text(value: Any, name: str) -> str | None:
    """``value`` when it is a string or null; else ``BadRequestError`` (400) naming ``name``."""
    if value is None or isinstance(value, str):
        return value
    raise BadRequestError(f"{name} must be a string or null.")


def _parse_identity(body: dict[str, Any]) -> dict[str, Any]:
    """Identity fields from a Device (or bulk ExportImportDevice) body."""
    status = body.get("status") or "enabled"
    if not isinstance(status, str) or status.lower() not in ("enabled", "disabled"):
        raise BadRequestError("status must be 'enabled' or 'disabled'.")
    auth = body.get("authentication") or {}
    if not isinstance(auth, dict):
        raise BadRequestError("authentication must be an object.")
    auth_type = auth.get("type") or "sas"
    if auth_type not in ("sas", "selfSigned", "certificateAuthority", "none"):
        raise BadRequestError(f"Unsupported authentication type {auth_type!r}.")
    sym = auth.get("symmetricKey") or {}
    thumbs = auth.get("x509Thumbprint") or {}
    if not isinstance(sym, dict) or not isinstance(thumbs, dict):
        raise BadRequestError("symmetricKey and x509Thumbprint must be objects.")
    fields: dict[str, Any] = {
        "status": status.lower(),
        "status_reason": _optional_text(body.get("statusReason"), "statusReason"),
        "auth_type": auth_type,
        "primary_thumbprint": _optional_text(thumbs.get("primaryThumbprint"), "primaryThumbprint"),
        "secondary_thumbprint": _optional_text(thumbs.get("secondaryThumbprint"), "secondaryThumbprint"),
    }
    if auth_type == "sas":
        fields["primary_key"] = _check_key(sym.get("primaryKey"), "primaryKey")
        fields["secondary_key"] = _check_key(sym.get("secondaryKey"), "secondaryKey")
    caps = body.get("capabilities")
    fields["capabilities"] = {"iotEdge": bool(caps.get("iotEdge"))} if isinstance(caps, dict) else {"iotEdge": False}
    return fields


class RegistryService:
    """Device identities in the store; tells the hub when a device must be dropped."""

    def __init__(self, store: HubStore, on_revoked: Callable[[str], None]) -> None:
        self._store = store
        self._on_revoked = on_revoked

    async def get(self, device_id: str) -> DeviceRecord:
        """``GET /devices/{id}`` (Azure "Devices - Get Identity"); ``DeviceNotFoundError`` 404001 when unknown."""
        record = await self._store.get(device_id)
        if record is None:
            raise device_not_found(device_id)
        return record

    def _new_record(self, device_id: str, body: dict[str, Any]) -> DeviceRecord:
        validate_device_id(device_id)
        now = utc_now()
        return DeviceRecord(
            device_id=device_id,
            generation_id=f"{time.time_ns() // 100:d}",
            device_etag=new_etag(),
            status_updated_time=now,
            **_parse_identity(body),
        )

    async def put(self, device_id: str, body: Any, *, if_match: str | None) -> DeviceRecord:
        """``PUT /devices/{id}``: create, or update when ``If-Match`` is given."""
        if not isinstance(body, dict):
            raise BadRequestError("The device body must be a JSON object.")
        body_id = body.get("deviceId")
        if body_id is not None and body_id != device_id:
            raise BadRequestError("deviceId in the body does not match the URL.")
        existing = await self._store.get(device_id)
        if existing is None:
            if if_match is not None and if_match.strip().strip('"') != "*":
                raise device_not_found(device_id)
            record = self._new_record(device_id, body)
            await self._store.insert(record)
            return record
        if if_match is None:
            raise DeviceAlreadyExistsError(f"A device with ID '{device_id}' is already registered.")
        check_if_match(if_match, existing.device_etag)
        return await self._update(existing, body)

    async def _update(self, existing: DeviceRecord, body: dict[str, Any]) -> DeviceRecord:
        fields = _parse_identity(body)
        old_keys = (existing.primary_key, existing.secondary_key, existing.primary_thumbprint, existing.secondary_thumbprint)
        sym = (body.get("authentication") or {}).get("symmetricKey") or {}
        for name, key in (("primary_key", "primaryKey"), ("secondary_key", "secondaryKey")):
            if not sym.get(key) and getattr(existing, name):
                fields[name] = getattr(existing, name)  # an update without keys keeps them
        if fields["status"] != existing.status:
            existing.status_updated_time = utc_now()
        for name, value in fields.items():
            setattr(existing, name, value)
        existing.device_etag = new_etag()
        await self._store.update_identity(existing)
        new_keys = (existing.primary_key, existing.secondary_key, existing.primary_thumbprint, existing.secondary_thumbprint)
        if existing.status == "disabled" or new_keys != old_keys:
            self._on_revoked(existing.device_id)  # disabled or re-keyed: its connection goes
        return existing

    async def delete(self, device_id: str, *, if_match: str | None) -> None:
        """``DELETE /devices/{id}`` (Azure "Devices - Delete Identity"): 404001 when unknown, 412 on an ``If-Match`` mismatch."""
        existing = await self.get(device_id)
        check_if_match(if_match, existing.device_etag)
        await self._store.delete(device_id)
        self._on_revoked(device_id)

    async def list(self, *, after: str = "", top: int = 1000) -> list[DeviceRecord]:
        """Up to ``top`` device identities ordered by id, after ``after``."""
        return await self._store.list(after=after, limit=top)

    async def bulk(self, items: Any) -> dict[str, Any]:
        """``POST /devices``: Azure's bulk registry operation, at most 100 devices per call.

        Each item is applied in its own step; failures are listed in ``errors`` and do
        not stop the others (``isSuccessful`` is false when any failed).
        """
        if not isinstance(items, list):
            raise BadRequestError("The bulk body must be a JSON array of devices.")
        if len(items) > MAX_BULK_DEVICES:
            raise BadRequestError(f"At most {MAX_BULK_DEVICES} devices per bulk operation, got {len(items)}.")
        errors: list[dict[str, Any]] = []
        async with self._store.transaction():
            for item in items:
                device_id = item.get("id") if isinstance(item, dict) else None
                try:
                    if not isinstance(item, dict):
                        raise BadRequestError("Each bulk item must be an object.")
                    await self._bulk_one(item)
                except HubError as exc:
                    errors.append(
                        {"deviceId": device_id, "errorCode": exc.error_name, "errorStatus": exc.message}
                    )
        return {"isSuccessful": not errors, "errors": errors, "warnings": []}

    async def _bulk_one(self, item: dict[str, Any]) -> None:
        device_id = item.get("id")
        mode = str(item.get("importMode") or "createOrUpdate").lower()
        if mode not in _IMPORT_MODES:
            raise BadRequestError(f"Unknown importMode {item.get('importMode')!r}.")
        validate_device_id(device_id)  # type: ignore[arg-type]
        etag = item.get("eTag") or item.get("etag")
        existing = await self._store.get(device_id)  # type: ignore[arg-type]
        if mode.endswith("ifmatchetag") and existing is not None and etag not in (existing.device_etag, "*"):
            raise PreconditionFailedError(f"ETag mismatch for device '{device_id}'.")
        if mode.startswith("delete"):
            if existing is None:
                raise device_not_found(device_id)  # type: ignore[arg-type]
            await self._store.delete(device_id)  # type: ignore[arg-type]
            self._on_revoked(device_id)  # type: ignore[arg-type]
        elif existing is None:
            if mode.startswith("update"):
                raise device_not_found(device_id)  # type: ignore[arg-type]
            await self._store.insert(self._new_record(device_id, item))  # type: ignore[arg-type]
        elif mode == "create":
            raise DeviceAlreadyExistsError(f"A device with ID '{device_id}' is already registered.")
        else:
            await self._update(existing, item)
