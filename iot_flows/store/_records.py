"""Records the store keeps: one :class:`DeviceRecord` per device (identity + twin)."""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DeviceRecord", "new_etag"]

#: Azure's placeholder for "never": used for times a device has not had yet.
NEVER = "0001-01-01T00:00:00Z"


def new_etag() -> str:
    """A fresh opaque etag (base64 of 8 random bytes, the shape Azure's etags have)."""
    return base64.b64encode(secrets.token_bytes(8)).decode()


@dataclass(slots=True)
class DeviceRecord:
    """A registry identity and its twin, as one row.

    Twin sections and their ``$metadata`` trees are plain dicts; the store
    serialises them to JSON columns.
    """

    device_id: str
    generation_id: str
    device_etag: str
    status_updated_time: str
    connection_state_updated_time: str = NEVER
    last_activity_time: str = NEVER
    status: str = "enabled"
    status_reason: str | None = None
    auth_type: str = "sas"
    primary_key: str | None = None
    secondary_key: str | None = None
    primary_thumbprint: str | None = None
    secondary_thumbprint: str | None = None
    capabilities: dict[str, Any] = field(default_factory=lambda: {"iotEdge": False})
    connection_state: str = "Disconnected"
    c2d_message_count: int = 0
    tags: dict[str, Any] = field(default_factory=dict)
    desired: dict[str, Any] = field(default_factory=dict)
    reported: dict[str, Any] = field(default_factory=dict)
    tags_meta: dict[str, Any] = field(default_factory=dict)
    desired_meta: dict[str, Any] = field(default_factory=dict)
    reported_meta: dict[str, Any] = field(default_factory=dict)
    desired_version: int = 1
    reported_version: int = 1
    twin_version: int = 1
    twin_etag: str = field(default_factory=new_etag)
    model_id: str = ""  #: Plug and Play model id announced at CONNECT

    def device_json(self) -> dict[str, Any]:
        """The registry ``Device`` object as the REST API serves it."""
        return {
            "deviceId": self.device_id,
            "generationId": self.generation_id,
            "etag": self.device_etag,
            "connectionState": self.connection_state,
            "status": self.status,
            "statusReason": self.status_reason,
            "connectionStateUpdatedTime": self.connection_state_updated_time,
            "statusUpdatedTime": self.status_updated_time,
            "lastActivityTime": self.last_activity_time,
            "cloudToDeviceMessageCount": self.c2d_message_count,
            "authentication": {
                "symmetricKey": {"primaryKey": self.primary_key, "secondaryKey": self.secondary_key},
                "x509Thumbprint": {
                    "primaryThumbprint": self.primary_thumbprint,
                    "secondaryThumbprint": self.secondary_thumbprint,
                },
                "type": self.auth_type,
            },
            "capabilities": dict(self.capabilities),
        }

    def twin_json(self) -> dict[str, Any]:
        """The full ``Twin`` document as the REST API serves it (docs/iothub-reference.md §1.1)."""
        return {
            "deviceId": self.device_id,
            "etag": self.twin_etag,
            "deviceEtag": self.device_etag,
            "status": self.status,
            "statusReason": self.status_reason,
            "statusUpdateTime": self.status_updated_time,
            "connectionState": self.connection_state,
            "lastActivityTime": self.last_activity_time,
            "cloudToDeviceMessageCount": self.c2d_message_count,
            "authenticationType": self.auth_type,
            "x509Thumbprint": {
                "primaryThumbprint": self.primary_thumbprint,
                "secondaryThumbprint": self.secondary_thumbprint,
            },
            "modelId": self.model_id,
            "version": self.twin_version,
            "tags": self.tags,
            "properties": {
                "desired": {**self.desired, "$metadata": self.desired_meta, "$version": self.desired_version},
                "reported": {
                    **self.reported,
                    "$metadata": self.reported_meta,
                    "$version": self.reported_version,
                },
            },
            "capabilities": dict(self.capabilities),
        }

    def device_twin_view(self) -> dict[str, Any]:
        """What a device sees on ``$iothub/twin/GET``: desired + reported, no tags, no wrapper."""
        return {
            "desired": {**self.desired, "$version": self.desired_version},
            "reported": {**self.reported, "$version": self.reported_version},
        }
