"""Device side: an asyncio IoT Hub device client and a fleet of simulated devices.

``DeviceClient`` is a small device SDK (MQTT, SAS renewal, twin, direct methods,
telemetry) that runs without Prefect. ``Fleet`` provisions and runs thousands of
``SimulatedDevice`` s whose ``DeviceBehaviour`` implements the device-management
patterns of reference §7 (reboot, firmware update, factory reset, configuration,
maintenance windows) with seeded fault injection.
"""

from iot_flows._window import MaintenanceWindow
from iot_flows.device._behaviours import BehaviourConfig, DeviceBehaviour
from iot_flows.device._client import (
    Backoff,
    DesiredUpdate,
    DeviceClient,
    DeviceTwin,
    MethodRequest,
    MethodResponse,
)
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
    "Backoff",
    "BehaviourConfig",
    "DesiredUpdate",
    "DeviceBehaviour",
    "DeviceClient",
    "DeviceTwin",
    "Fleet",
    "FleetStats",
    "MaintenanceWindow",
    "MethodRequest",
    "MethodResponse",
    "ProvisionResult",
    "SimulatedDevice",
    "derive_device_key",
    "device_connection_string",
    "provision_devices",
    "spread_tags",
    "tag_devices",
]
