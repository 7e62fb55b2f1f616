"""Azure's per-tier throttles at the REST boundary (``hub serve --quota``; docs/iothub-reference.md §6).

An ASGI middleware: it classifies each service request into an IoT Hub throttle
(:func:`operation_of`), delays it while the throttle's queue is short (traffic shaping)
and otherwise answers 429 ``ThrottlingException`` (429001) in IoT Hub's error format
(docs/iothub-reference.md §3.8), with ``Retry-After`` in seconds. The hub's own endpoints (``/healthz``,
``/iot-flows/...``) are never throttled. Without a quota it passes everything through.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Receive, Scope, Send

from iot_flows._exceptions import ThrottledError
from iot_flows.hub._quota import Operation, method_cost
from iot_flows.hub.api._errors import error_response

if TYPE_CHECKING:
    from iot_flows.hub._quota import Quota

__all__ = ["Throttle", "operation_of"]

_TWIN = re.compile(r"^/twins/[^/]+$")
_METHOD = re.compile(r"^/twins/[^/]+/methods$")
_DEVICE = re.compile(r"^/devices/[^/]+$")


def operation_of(method: str, path: str) -> Operation | None:
    """The IoT Hub throttle a REST call counts against, or None (not throttled).

    ``path`` has no trailing ``/``. Twin GET: twin reads; twin PATCH/PUT: twin updates;
    ``POST /twins/{id}/methods``: direct methods; ``POST /devices/query``: queries;
    ``/jobs/v2/...``: jobs operations; ``/devices`` and ``/devices/{id}``: identity
    registry operations.
    """
    if path.startswith("/jobs/"):
        return Operation.JOBS
    if path == "/devices/query":
        return Operation.QUERY
    if path == "/devices" or _DEVICE.match(path):
        return Operation.REGISTRY
    if _METHOD.match(path):
        return Operation.DIRECT_METHOD if method == "POST" else None
    if _TWIN.match(path):
        return Operation.TWIN_READ if method == "GET" else Operation.TWIN_UPDATE
    return None


class Throttle:
    """ASGI middleware applying ``quota()`` (None: no throttling) to service requests.

    ``quota`` is a callable so that the hub's current quota is read per request.
    """

    def __init__(self, app: ASGIApp, quota: Callable[[], Quota | None]) -> None:
        self.app = app
        self.quota = quota

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        quota = self.quota() if scope["type"] == "http" else None
        if quota is not None:
            path: str = scope["path"]
            if len(path) > 1 and path.endswith("/"):
                path = path[:-1]
            op = operation_of(scope["method"], path)
            if op is not None:
                cost = 1.0
                if op is Operation.DIRECT_METHOD:
                    length = dict(scope.get("headers") or []).get(b"content-length", b"0")
                    cost = method_cost(int(length) if length.isdigit() else 0)
                try:
                    await quota.acquire(op, cost)
                except ThrottledError as exc:
                    await error_response(exc)(scope, receive, send)
                    return
        await self.app(scope, receive, send)
