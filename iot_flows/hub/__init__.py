"""The bundled IoT Hub-compatible hub: MQTT device endpoint, service REST API, store."""

from iot_flows._settings import HubSettings
from iot_flows.hub._hub import Hub

__all__ = ["Hub", "HubSettings"]
