"""Device side: an asyncio IoT Hub device client and a fleet of simulated devices.

``DeviceClient`` is a small device SDK (MQTT, SAS renewal, twin, direct methods,
telemetry) that runs without Prefect. ``Fleet`` provisions and runs thousands of
``SimulatedDevice`` s whose ``DeviceBehaviour`` implements the device-management
patterns of docs/iothub-reference.md §7 (reboot, firmware update, factory reset, configuration,
maintenance windows) with seeded fault injection. Each pattern is a ``Behaviour``
class registered by name (``register_behaviour``); ``DeviceClient.state`` is one of
``State``, moved only by the ``TRANSITIONS`` table.
"""

from iot_flows._window import MaintenanceWindow
from iot_flows.device._behaviour import (
    Behaviour,
    DesiredChange,
    register_behaviour,
    registered_behaviours,
    unregister_behaviour,
)
from iot_flows.device._behaviours import BehaviourConfig, DeviceBehaviour
from iot_flows.device._client import (
    Backoff,
    DesiredUpdate,
    DeviceClient,
    DeviceTwin,
    MethodRequest,
    MethodResponse,
)
from iot_flows.device._lifecycle import TRANSITIONS, Event, IllegalTransition, State
from iot_flows.device._provision import (
    ProvisionResult,
    derive_device_key,
    device_connection_string,
    provision_devices,
    spread_tags,
    tag_devices,
)
from iot_flows.device._simulator import Fleet, FleetStats, SimulatedDevice

__all__ = [
    "TRANSITIONS",
    "Backoff",
    "Behaviour",
    "BehaviourConfig",
    "DesiredChange",
    "DesiredUpdate",
    "DeviceBehaviour",
    "DeviceClient",
    "DeviceTwin",
    "Event",
    "Fleet",
    "FleetStats",
    "IllegalTransition",
    "MaintenanceWindow",
    "MethodRequest",
    "MethodResponse",
    "ProvisionResult",
    "SimulatedDevice",
    "State",
    "derive_device_key",
    "device_connection_string",
    "provision_devices",
    "register_behaviour",
    "registered_behaviours",
    "unregister_behaviour",
    "spread_tags",
    "tag_devices",
]
