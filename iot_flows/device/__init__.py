"""Device side: an asyncio IoT Hub device client (simulated fleets follow)."""

from iot_flows.device._client import (
    Backoff,
    DesiredUpdate,
    DeviceClient,
    DeviceTwin,
    MethodRequest,
    MethodResponse,
)

__all__ = [
    "Backoff",
    "DesiredUpdate",
    "DeviceClient",
    "DeviceTwin",
    "MethodRequest",
    "MethodResponse",
]
