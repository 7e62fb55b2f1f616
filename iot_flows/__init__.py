"""iot-flows: IoT device-fleet operations as Prefect flows, with a bundled IoT Hub-compatible hub.

The core (hub, client, device, query, jobs) runs without Prefect; the Prefect layer is
imported by path: ``iot_flows.blocks``, ``iot_flows.tasks``, ``iot_flows.flows``.
"""

__version__ = "0.1.0"  # first: submodules read it during import

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
    ServiceUnavailableError,
    ThrottledError,
    TransportError,
    UnauthorizedError,
    error_for_status,
)
from iot_flows._sas import ConnectionString, generate_sas_token
from iot_flows._types import MethodResult
from iot_flows.client import HubClient
from iot_flows.device import BehaviourConfig, DeviceClient, Fleet, SimulatedDevice
from iot_flows.hub import Hub, HubSettings
from iot_flows.hub._embedded import EmbeddedHub
from iot_flows.jobs import DeviceJobStatus, JobSettings, JobStatus, JobType
from iot_flows.twin import TwinTooLargeError

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
