"""Rules every REST request meets before routing: path forms, ``api-version``, throttling.

One pure-ASGI middleware (:class:`RequestRules`) applies them all, so a request crosses
one layer for them (issue 13: the REST overhead of a query page):

* **Path forms** (docs/iothub-reference.md §9.5): the service SDKs send some paths with a
  trailing slash (the Node SDK lists devices with ``GET /devices/?api-version=...``) and
  do not follow redirects. Every route therefore answers ``/x`` and ``/x/`` alike, with
  no redirect: one trailing ``/`` is removed before routing.
* **api-version** (docs/iothub-reference.md §3): every IoT Hub REST call carries ``?api-version=``.
  Azure answers a missing or unknown version with 400 and error code 400001
  ``InvalidProtocolVersion``; so does the hub, so that a client bug shows up here and
  not first in production. :data:`SUPPORTED_API_VERSIONS` lists what the official SDKs
  send (``docs/azure-contract.md`` gives the sources). The hub's own endpoints
  (``/healthz``, ``/openapi.json``, ``/iot-flows/...``) need no version.
* **Throttling** (``hub serve --quota``): Azure's per-tier throttles, applied after the
  version check (:mod:`._throttle`).
* **Hot routes** (``POST /devices/query``, ``POST /twins/{id}/methods``) are then
  answered without the router (``hot``: :func:`._hot_routes.hot_route`); everything else is routed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from iot_flows._exceptions import BadRequestError, ThrottledError
from iot_flows.hub.api._errors import error_response
from iot_flows.hub.api._throttle import throttle_cost

if TYPE_CHECKING:
    from iot_flows.hub._quota import Quota

__all__ = ["SUPPORTED_API_VERSIONS", "RequestRules"]

#: api-version values the official SDKs send (newest first); see docs/azure-contract.md.
SUPPORTED_API_VERSIONS: frozenset[str] = frozenset({"2021-04-12", "2020-09-30", "2019-10-01"})
#: Paths of the hub's own (non-Azure) endpoints: no api-version required.
_OWN_PREFIXES = ("/healthz", "/openapi.json", "/iot-flows/")


def _invalid_version(value: str | None) -> BadRequestError:
    if value is None:
        text = "The api-version query parameter is required."
    else:
        text = f"Invalid api-version '{value}'; supported: {', '.join(sorted(SUPPORTED_API_VERSIONS, reverse=True))}."
    return BadRequestError(text, error_code=400001, error_name="InvalidProtocolVersion")


def _api_version(query_string: bytes) -> str | None:
    query = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    return next((value for name, value in query if name == "api-version"), None)


class RequestRules:
    """ASGI middleware: drop one trailing ``/``, check ``api-version`` on Azure routes,
    apply ``quota()`` (None: no throttling; read per request) to service requests, then
    answer a ``hot`` route directly (else the wrapped app, the router, does)."""

    def __init__(
        self,
        app: ASGIApp,
        quota: Callable[[], Quota | None] | None = None,
        hot: Callable[[str, str], ASGIApp | None] | None = None,
    ) -> None:
        self.app = app
        self.quota = quota
        #: ``(method, path)`` -> the ASGI app answering it without the router, or None
        self.hot = hot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if len(path) > 1 and path.endswith("/"):
            path = path[:-1]
            raw = scope.get("raw_path")
            scope = {**scope, "path": path, "raw_path": raw[:-1] if raw and raw.endswith(b"/") else raw}
        if not path.startswith(_OWN_PREFIXES):
            version = _api_version(scope.get("query_string", b""))
            if version not in SUPPORTED_API_VERSIONS:
                await error_response(_invalid_version(version))(scope, receive, send)
                return
        quota = self.quota() if self.quota is not None else None
        if quota is not None:
            found = throttle_cost(scope, path)
            if found is not None:
                try:
                    await quota.acquire(*found)
                except ThrottledError as exc:
                    await error_response(exc)(scope, receive, send)
                    return
        hot = self.hot(scope["method"], path) if self.hot is not None else None
        if hot is not None:
            await hot(scope, receive, send)
            return
        await self.app(scope, receive, send)
