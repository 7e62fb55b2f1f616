"""iot-flows: IoT device-fleet operations as Prefect flows, with a bundled IoT Hub-compatible hub.

The core (hub, client, device, query, jobs) runs without Prefect; the Prefect layer is
imported by path: ``iot_flows.blocks``, ``iot_flows.tasks``, ``iot_flows.flows``.
"""

__version__ = "0.1.0"  # first: submodules read it during import

import importlib
from typing import TYPE_CHECKING, Any

from iot_flows._exceptions import (
    BadRequestError,
    ConfirmationTimeoutError,
    ConflictError,
    ConnectError,
    ConnectionLostError,
    DeviceAlreadyExistsError,
    DeviceNotFoundError,
    DeviceNotOnlineError,
    FirmwareUpdateFailedError,
    ForbiddenError,
    GatewayTimeoutError,
    HubError,
    InternalServerError,
    InvalidJobTransitionError,
    IoTFlowsError,
    JobAlreadyExistsError,
    JobFailedError,
    JobNotFoundError,
    NotFoundError,
    OperationFailedError,
    PayloadTooLargeError,
    PreconditionFailedError,
    ProtocolError,
    QuerySyntaxError,
    QuotaExceededError,
    RequestTimeoutError,
    ServiceUnavailableError,
    ThrottledError,
    TransportError,
    UnauthorizedError,
    error_for_status,
)
from iot_flows._sas import ConnectionString, generate_sas_token
from iot_flows._types import MethodResult

# The rest is imported on first use (PEP 562), so that ``import iot_flows.device`` does
# not load the server stack (uvicorn, starlette, lark, the hub) nor the service client.
_LAZY = {
    "BehaviourConfig": "iot_flows.device",
    "DeviceClient": "iot_flows.device",
    "DeviceJobStatus": "iot_flows.jobs",
    "EmbeddedHub": "iot_flows.hub._embedded",
    "Fleet": "iot_flows.device",
    "Hub": "iot_flows.hub",
    "HubClient": "iot_flows.client",
    "HubSettings": "iot_flows.hub",
    "JobSettings": "iot_flows.jobs",
    "JobStatus": "iot_flows.jobs",
    "JobType": "iot_flows.jobs",
    "SimulatedDevice": "iot_flows.device",
    "TwinTooLargeError": "iot_flows.twin",
}

if TYPE_CHECKING:
    from iot_flows.client import HubClient
    from iot_flows.device import BehaviourConfig, DeviceClient, Fleet, SimulatedDevice
    from iot_flows.hub import EmbeddedHub, Hub, HubSettings
    from iot_flows.jobs import DeviceJobStatus, JobSettings, JobStatus, JobType
    from iot_flows.twin import TwinTooLargeError


def __getattr__(name: str) -> Any:
    """Import a lazily exported name (see ``_LAZY``) on first access and cache it."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'iot_flows' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

__all__ = [
    "BadRequestError",
    "BehaviourConfig",
    "ConfirmationTimeoutError",
    "ConflictError",
    "ConnectError",
    "ConnectionLostError",
    "ConnectionString",
    "DeviceAlreadyExistsError",
    "DeviceClient",
    "DeviceJobStatus",
    "DeviceNotFoundError",
    "DeviceNotOnlineError",
    "EmbeddedHub",
    "FirmwareUpdateFailedError",
    "Fleet",
    "ForbiddenError",
    "GatewayTimeoutError",
    "Hub",
    "HubClient",
    "HubError",
    "HubSettings",
    "InternalServerError",
    "InvalidJobTransitionError",
    "IoTFlowsError",
    "JobAlreadyExistsError",
    "JobFailedError",
    "JobNotFoundError",
    "JobSettings",
    "JobStatus",
    "JobType",
    "MethodResult",
    "NotFoundError",
    "OperationFailedError",
    "PayloadTooLargeError",
    "PreconditionFailedError",
    "ProtocolError",
    "QuerySyntaxError",
    "QuotaExceededError",
    "RequestTimeoutError",
    "ServiceUnavailableError",
    "SimulatedDevice",
    "ThrottledError",
    "TransportError",
    "TwinTooLargeError",
    "UnauthorizedError",
    "__version__",
    "error_for_status",
    "generate_sas_token",
]
