"""Azure's per-tier throttles at the REST boundary (``hub serve --quota``; docs/iothub-reference.md §6).

Each service request is classified into an IoT Hub throttle (:func:`operation_of`,
:func:`throttle_cost`); the REST middleware (``_request_rules.RequestRules``) delays it
while the throttle's queue is short (traffic shaping) and otherwise answers 429
``ThrottlingException`` (429001) in IoT Hub's error format (docs/iothub-reference.md §3.8), with
``Retry-After`` in seconds. The hub's own endpoints (``/healthz``, ``/iot-flows/...``)
are never throttled. Without a quota everything passes through.
"""

from __future__ import annotations

import re

from starlette.types import Scope

from iot_flows.hub._quota import Operation, method_cost

__all__ = ["operation_of", "throttle_cost"]

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


def throttle_cost(scope: Scope, path: str) -> tuple[Operation, float] | None:
    """The throttle and cost of one HTTP request (``path`` without a trailing ``/``), or None.

    A direct method costs by its payload size (``content-length``; docs/iothub-reference.md §6)."""
    op = operation_of(scope["method"], path)
    if op is None:
        return None
    cost = 1.0
    if op is Operation.DIRECT_METHOD:
        length = dict(scope.get("headers") or []).get(b"content-length", b"0")
        cost = method_cost(int(length) if length.isdigit() else 0)
    return op, cost
