"""Service-side client of IoT Hub's REST contract (bundled hub or Azure IoT Hub)."""

from iot_flows.client._client import API_VERSION, HubClient, QueryPage, quote_string

__all__ = ["API_VERSION", "HubClient", "QueryPage", "quote_string"]
