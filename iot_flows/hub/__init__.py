"""The bundled IoT Hub-compatible hub: MQTT device endpoint, service REST API, store."""

from iot_flows._settings import HubSettings
from iot_flows.hub._embedded import EmbeddedHub
from iot_flows.hub._hub import Hub, ListenError
from iot_flows.hub._job_engine import JobEngine
from iot_flows.hub._methods import MethodCall, parse_method_call
from iot_flows.hub._sessions import Subscription

__all__ = ["EmbeddedHub", "Hub", "HubSettings", "JobEngine", "ListenError", "MethodCall", "Subscription", "parse_method_call"]
