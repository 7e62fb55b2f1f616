"""Exception -> IoT Hub error response, in one place for the whole REST API.

Body format (docs/iothub-reference.md §3.8): the JSON error object is itself a JSON *string* inside
``Message``; the symbolic name goes in the ``iothub-errorcode`` header. DeviceNotFound
uses the legacy ``ErrorCode:DeviceNotFound;...`` form that the SDKs match on.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response

from iot_flows._exceptions import DeviceNotFoundError, HubError, InternalServerError
from iot_flows.store import storage_unavailable

__all__ = ["error_response", "hub_error_handler", "storage_error_handler", "unexpected_error_handler"]

log = logging.getLogger(__name__)


#: IoT Hub's generic error codes (status x 1000), for statuses without a specific code.
_GENERIC_NAMES = {
    400: "GenericBadRequest", 401: "GenericUnauthorized", 403: "GenericForbidden", 404: "GenericNotFound",
    405: "GenericMethodNotAllowed", 409: "GenericConflict", 412: "GenericPreconditionFailed",
    413: "GenericRequestEntityTooLarge", 415: "GenericUnsupportedMediaType", 429: "GenericTooManyRequests",
    500: "GenericServerError", 503: "GenericServiceUnavailable", 504: "GenericTimeout",
}


def _code_and_name(exc: HubError) -> tuple[int, str]:
    """The error's code and name; a code from another status class (e.g. 500001 on a 405)
    becomes IoT Hub's generic code for the status (405000 GenericMethodNotAllowed)."""
    status = exc.status_code
    if exc.error_code is not None and exc.error_code // 1000 == status:
        return exc.error_code, exc.error_name
    return status * 1000, _GENERIC_NAMES.get(status, "GenericError")


def error_response(exc: HubError) -> Response:
    """The IoT Hub error response for ``exc``: its status, the error body, ``iothub-errorcode``."""
    now = datetime.now(UTC)
    error_code, error_name = _code_and_name(exc)
    tracking_id = exc.tracking_id or f"{uuid.uuid4().hex}-G:0-TimeStamp:{now:%m/%d/%Y %H:%M:%S}"
    if isinstance(exc, DeviceNotFoundError) and exc.error_code == 404001:
        message = f"ErrorCode:DeviceNotFound;{exc.message}"
    else:
        message = json.dumps(
            {
                "errorCode": error_code,
                "trackingId": tracking_id,
                "message": exc.message,
                "info": exc.info,
                "timestampUtc": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            }
        )
    body = json.dumps({"Message": message, "ExceptionMessage": f"Tracking ID:{tracking_id}"})
    headers = {"iothub-errorcode": error_name}
    retry_after = getattr(exc, "retry_after", None)
    if retry_after:
        headers["Retry-After"] = str(int(retry_after))
    return Response(body, status_code=exc.status_code, media_type="application/json", headers=headers)


async def hub_error_handler(request: Request, exc: Exception) -> Response:
    """Starlette handler: a ``HubError`` as IoT Hub's error body and status."""
    assert isinstance(exc, HubError)
    return error_response(exc)


async def storage_error_handler(request: Request, exc: Exception) -> Response:
    """A database driver's error: 503 when storage is degraded (locked, disk full), else 500.

    Registered for the drivers' base classes (``STORAGE_ERRORS``), so the response is
    answered by Starlette's exception middleware and the connection stays usable.
    """
    unavailable = storage_unavailable(exc)
    if unavailable is not None:
        log.warning("storage unavailable on %s %s: %s", request.method, request.url.path, exc)
        return error_response(unavailable)
    log.exception("storage error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(InternalServerError("An internal error occurred."))


async def unexpected_error_handler(request: Request, exc: Exception) -> Response:
    """Starlette handler: any other exception is logged and answered 500 (IoT Hub error body)."""
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(InternalServerError("An internal error occurred."))
