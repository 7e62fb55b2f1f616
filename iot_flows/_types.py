"""Small value types shared by the hub, the service client and the flows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["JsonObject", "MethodResult"]

JsonObject = dict[str, Any]


@dataclass(frozen=True, slots=True)
class MethodResult:
    """A direct method's outcome as the *device* chose it: its status code and JSON payload.

    Device outcomes are data, not errors: a device answering 500 is a result.
    """

    status: int
    payload: Any

    @property
    def succeeded(self) -> bool:
        """True for a 2xx ``status`` (the device's answer counts as success)."""
        return 200 <= self.status < 300

    def to_json(self) -> JsonObject:
        """The REST response body ``{"status": int, "payload": any}`` (Azure "Devices - Invoke Method")."""
        return {"status": self.status, "payload": self.payload}
