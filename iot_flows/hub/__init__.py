"""The bundled IoT Hub-compatible hub: MQTT device endpoint, service REST API, store."""

from iot_flows.hub._hub import Hub, HubSettings

__all__ = ["Hub", "HubSettings"]
