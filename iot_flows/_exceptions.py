"""The one exception hierarchy of iot-flows, mapped to IoT Hub status and error codes.

::

    IoTFlowsError                          base; never raised directly
    ├── HubError                           .status_code .error_code .retryable
    │   ├── BadRequestError         400    ├── QuerySyntaxError
    │   │                                  └── TwinTooLargeError (iot_flows.twin: size limits)
    │   ├── UnauthorizedError       401
    │   ├── ForbiddenError          403    └── QuotaExceededError
    │   ├── NotFoundError           404    ├── DeviceNotFoundError, JobNotFoundError
    │   │                                  └── DeviceNotOnlineError (direct method, device offline)
    │   ├── ConflictError           409    ├── DeviceAlreadyExistsError, JobAlreadyExistsError
    │   │                                  └── InvalidJobTransitionError
    │   ├── PreconditionFailedError 412    (etag mismatch)
    │   ├── PayloadTooLargeError    413
    │   ├── ThrottledError          429    .retry_after
    │   ├── InternalServerError     500
    │   ├── ServiceUnavailableError 503
    │   └── GatewayTimeoutError     504    (device did not answer a direct method in time)
    ├── TransportError                     below the hub protocol
    │   ├── ConnectError
    │   ├── ConnectionLostError
    │   ├── ProtocolError
    │   └── RequestTimeoutError            also a builtin TimeoutError (device requests)
    └── OperationFailedError               a fleet operation (flow) ended badly
        ├── JobFailedError                 the hub job failed / was cancelled / too many device failures
        ├── ConfirmationTimeoutError       devices did not report the expected state in time
        └── FirmwareUpdateFailedError      devices reported downloadFailed / applyFailed

The same table serves the hub's MQTT twin responses (``$iothub/twin/res/{status}``),
the REST API (exception -> response) and the httpx client (response -> exception):
:func:`error_for_status` picks the most specific class for a status and error code.
Device outcomes (a direct method's status and payload) are data, never errors.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "BadRequestError",
    "ConflictError",
    "ConnectError",
    "ConfirmationTimeoutError",
    "ConnectionLostError",
    "DeviceAlreadyExistsError",
    "DeviceNotFoundError",
    "DeviceNotOnlineError",
    "FirmwareUpdateFailedError",
    "ForbiddenError",
    "GatewayTimeoutError",
    "HubError",
    "InternalServerError",
    "InvalidJobTransitionError",
    "IoTFlowsError",
    "JobAlreadyExistsError",
    "JobFailedError",
    "JobNotFoundError",
    "NotFoundError",
    "OperationFailedError",
    "PayloadTooLargeError",
    "PreconditionFailedError",
    "ProtocolError",
    "QuerySyntaxError",
    "QuotaExceededError",
    "RequestTimeoutError",
    "ServiceUnavailableError",
    "ThrottledError",
    "TransportError",
    "UnauthorizedError",
    "error_for_status",
]


class IoTFlowsError(Exception):
    """Base of every error iot-flows raises on purpose."""


class HubError(IoTFlowsError):
    """Raised when the hub answers an operation with an error status.

    ``error_code`` is IoT Hub's six-digit code (e.g. 404001); ``error_name`` its
    symbolic name (``DeviceNotFound``), sent in the ``iothub-errorcode`` header.
    """

    status_code: ClassVar[int] = 500
    default_error_code: ClassVar[int] = 500001
    default_error_name: ClassVar[str] = "ServerError"
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str = "",
        *,
        error_code: int | None = None,
        error_name: str | None = None,
        status_code: int | None = None,
        info: dict[str, Any] | None = None,
        tracking_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.error_code = error_code if error_code is not None else self.default_error_code
        self.error_name = error_name or self.default_error_name
        self.info = info or {}
        self.tracking_id = tracking_id
        if status_code is not None:
            # Keeps the raw number for codes no subclass knows.
            self.status_code = status_code  # type: ignore[misc]

    def __str__(self) -> str:
        return f"[{self.status_code}] {self.error_name}: {self.message}"


class BadRequestError(HubError):
    """Raised when the request is malformed or breaks a documented limit (400)."""

    status_code = 400
    default_error_code = 400004
    default_error_name = "ArgumentInvalid"


class QuerySyntaxError(BadRequestError):
    """Raised when a query cannot be parsed; the message gives the position."""

    default_error_code = 400004
    default_error_name = "ArgumentInvalid"


class UnauthorizedError(HubError):
    """Raised when credentials are missing, wrong, expired or lack a permission (401)."""

    status_code = 401
    default_error_code = 401002
    default_error_name = "IotHubUnauthorizedAccess"


class ForbiddenError(HubError):
    """Raised when a quota forbids the operation (403)."""

    status_code = 403
    default_error_code = 403002
    default_error_name = "IotHubQuotaExceeded"


class QuotaExceededError(ForbiddenError):
    """Raised when a hub quota is exhausted."""


class NotFoundError(HubError):
    """Raised when the addressed resource does not exist (404)."""

    status_code = 404
    default_error_code = 404001
    default_error_name = "DeviceNotFound"


class DeviceNotFoundError(NotFoundError):
    """Raised when the device is not in the registry."""


class JobNotFoundError(NotFoundError):
    """Raised when no job has that id."""

    default_error_code = 404002
    default_error_name = "JobNotFound"


class DeviceNotOnlineError(NotFoundError):
    """Raised when a direct method targets a device that is offline or not subscribed."""

    default_error_code = 404103
    default_error_name = "DeviceNotOnline"
    retryable = True


class ConflictError(HubError):
    """Raised when the operation conflicts with the current state (409)."""

    status_code = 409
    default_error_code = 409001
    default_error_name = "DeviceAlreadyExists"


class DeviceAlreadyExistsError(ConflictError):
    """Raised when creating a device whose id is taken."""


class JobAlreadyExistsError(ConflictError):
    """Raised when creating a job whose id was used before."""

    default_error_code = 409104
    default_error_name = "JobAlreadyExists"


class InvalidJobTransitionError(ConflictError):
    """Raised when a job cannot move to the requested state (e.g. cancel a completed job)."""

    default_error_code = 409105
    default_error_name = "JobStateTransitionInvalid"


class PreconditionFailedError(HubError):
    """Raised when an ``If-Match`` etag does not match the current one (412)."""

    status_code = 412
    default_error_code = 412001
    default_error_name = "PreconditionFailed"


class PayloadTooLargeError(HubError):
    """Raised when a message or document is over its size limit (413)."""

    status_code = 413
    default_error_code = 413001
    default_error_name = "MessageTooLarge"


class ThrottledError(HubError):
    """Raised when the hub throttles the caller (429); ``retry_after`` in seconds if known."""

    status_code = 429
    default_error_code = 429001
    default_error_name = "ThrottlingException"
    retryable = True

    def __init__(self, message: str = "", *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class InternalServerError(HubError):
    """Raised when the hub fails internally (500)."""

    status_code = 500
    default_error_code = 500001
    default_error_name = "ServerError"
    retryable = True


class ServiceUnavailableError(HubError):
    """Raised when the hub is temporarily unavailable (503)."""

    status_code = 503
    default_error_code = 503001
    default_error_name = "ServiceUnavailable"
    retryable = True


class GatewayTimeoutError(HubError):
    """Raised when the device did not answer a direct method in time (504)."""

    status_code = 504
    default_error_code = 504101
    default_error_name = "GatewayTimeout"
    retryable = True


class TransportError(IoTFlowsError):
    """Raised for failures below the hub protocol (sockets, TLS, MQTT framing)."""

    retryable: ClassVar[bool] = True


class ConnectError(TransportError):
    """Raised when a connection cannot be established."""


class ConnectionLostError(TransportError):
    """Raised when an established connection drops while a request is pending."""


class ProtocolError(TransportError):
    """Raised when the peer breaks the wire protocol."""

    retryable = False


class RequestTimeoutError(TransportError, TimeoutError):
    """Raised when the hub does not answer a device request in time (no CONNACK, SUBACK,
    PUBACK or ``$iothub/twin/res`` within the timeout). Also a builtin :class:`TimeoutError`,
    so ``except TimeoutError`` keeps working."""


class OperationFailedError(IoTFlowsError):
    """Raised by a flow when the fleet operation it ran ended badly; ``summary`` says how."""

    def __init__(self, message: str, *, summary: Any = None) -> None:
        super().__init__(message)
        self.summary = summary


class JobFailedError(OperationFailedError):
    """Raised when a job fails, is cancelled, or more devices failed than allowed."""


class ConfirmationTimeoutError(OperationFailedError):
    """Raised when devices did not report the expected state before the deadline."""


class FirmwareUpdateFailedError(OperationFailedError):
    """Raised when devices report a failed download or apply."""


def _leaf_classes() -> list[type[HubError]]:
    out: list[type[HubError]] = []
    stack: list[type[HubError]] = [HubError]
    while stack:
        cls = stack.pop()
        out.append(cls)
        stack.extend(cls.__subclasses__())
    return out


_BY_STATUS: dict[int, type[HubError]] = {
    cls.status_code: cls for cls in HubError.__subclasses__()
}
# Specific error codes that have their own class (derived from the classes themselves).
_BY_CODE: dict[int, type[HubError]] = {}
for _cls in _leaf_classes():
    _parent = _cls.__mro__[1]
    # Only classes that introduce their own code; a subclass sharing its parent's code
    # (QuerySyntaxError, TwinTooLargeError) is raised on purpose, never picked by code.
    if _cls is HubError or _cls in _BY_STATUS.values() or _cls.default_error_code == getattr(_parent, "default_error_code", None):
        continue
    _BY_CODE.setdefault(_cls.default_error_code, _cls)
del _cls, _parent
# 404001 is DeviceNotFound, the most common 404 (NotFoundError's own default).
_BY_CODE[404001] = DeviceNotFoundError
_BY_CODE[409001] = DeviceAlreadyExistsError


def error_for_status(
    status: int,
    message: str = "",
    error_code: int | None = None,
    error_name: str | None = None,
    **kwargs: Any,
) -> HubError:
    """Return the most specific :class:`HubError` for an HTTP/MQTT status and error code.

    An unknown status gives a plain ``HubError`` that keeps the raw number.
    """
    cls: type[HubError] | None = None
    if error_code is not None:
        candidate = _BY_CODE.get(error_code)
        if candidate is not None and candidate.status_code == status:
            cls = candidate
    if cls is None:
        cls = _BY_STATUS.get(status)
    if cls is None:
        return HubError(message, error_code=error_code, error_name=error_name, status_code=status, **kwargs)
    return cls(message, error_code=error_code, error_name=error_name, **kwargs)
