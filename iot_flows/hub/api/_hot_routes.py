"""The hot REST routes, answered without Starlette's router (issue 13: REST overhead).

``POST /devices/query`` and ``POST /twins/{id}/methods`` are matched by their shape and
their endpoint (the same function the router would call, :mod:`._routes_jobs` and
:mod:`._routes`) is run directly, its exceptions mapped by the same handlers the
application registers (:mod:`._errors`). This skips the router's walk over every route,
the exception middleware and the per-route wrappers: ~0.2 ms of a query page. Any
other request, and these paths with another method, go through the router as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from iot_flows._exceptions import HubError
from iot_flows.hub.api._errors import error_response, storage_error_handler, unexpected_error_handler
from iot_flows.hub.api._routes import invoke_method
from iot_flows.hub.api._routes_jobs import query_devices
from iot_flows.store import STORAGE_ERRORS

__all__ = ["hot_route", "run_hot"]

Endpoint = Callable[[Request], Awaitable[Response]]


def hot_route(method: str, path: str) -> ASGIApp | None:
    """The ASGI app answering a hot route (``path`` without a trailing ``/``), or None."""
    if method != "POST":
        return None
    if path == "/devices/query":
        return partial(run_hot, query_devices, {})
    if path.startswith("/twins/") and path.endswith("/methods"):
        device_id = path[7:-8]
        if device_id and "/" not in device_id:
            return partial(run_hot, invoke_method, {"device_id": device_id})
    return None


async def run_hot(endpoint: Endpoint, params: dict[str, str], scope: Scope, receive: Receive, send: Send) -> None:
    """Answer one request with ``endpoint``; errors as the application's handlers answer them."""
    scope["path_params"] = params
    request = Request(scope, receive)
    try:
        response = await endpoint(request)
    except HubError as exc:
        response = error_response(exc)
    except STORAGE_ERRORS as exc:
        response = await storage_error_handler(request, exc)
    except Exception as exc:
        response = await unexpected_error_handler(request, exc)
    await response(scope, receive, send)
