"""Service-side client of IoT Hub's REST contract (bundled hub or Azure IoT Hub)."""

from iot_flows.client._client import API_VERSION, HubClient, QueryPage
from iot_flows.client._conditions import (
    MAX_BULK_DEVICES,
    MAX_CONDITION_LENGTH,
    MAX_QUERY_LENGTH,
    chunks,
    device_id_conditions,
    quote_string,
)

__all__ = [
    "API_VERSION",
    "MAX_BULK_DEVICES",
    "MAX_CONDITION_LENGTH",
    "MAX_QUERY_LENGTH",
    "HubClient",
    "QueryPage",
    "chunks",
    "device_id_conditions",
    "quote_string",
]
