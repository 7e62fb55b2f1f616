"""Service REST routes: registry, twins and direct methods (docs/iothub-reference.md §3, exact Azure paths).

Every route authenticates the caller's SAS token against the policy permission Azure
requires, parses JSON only when ``content-type`` says so (as Azure does), and lets
:class:`HubError` propagate to the one error handler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from iot_flows._exceptions import BadRequestError
from iot_flows._json import loads
from iot_flows.hub._auth import Permission
from iot_flows.hub._methods import parse_method_call
from iot_flows.hub.api._openapi import openapi_routes

if TYPE_CHECKING:
    from iot_flows.hub._hub import Hub

__all__ = ["json_body", "routes"]

_R, _W, _S = Permission.REGISTRY_READ, Permission.REGISTRY_WRITE, Permission.SERVICE_CONNECT


def hub_of(request: Request) -> Hub:
    """The :class:`Hub` serving this request."""
    return request.app.state.hub  # type: ignore[no-any-return]


def authorize(request: Request, *permissions: Permission) -> Hub:
    """Check the request's SAS token grants ``permissions``; return the hub.

    Raises ``UnauthorizedError`` (401) for a missing or bad token, 401 for a missing permission.
    """
    hub = hub_of(request)
    hub.service_auth.authorize(request.headers.get("authorization"), *permissions)
    return hub


async def json_body(request: Request) -> Any:
    """The parsed JSON body, or None when the request does not declare JSON."""
    if "application/json" not in request.headers.get("content-type", "").lower():
        return None
    raw = await request.body()
    if not raw.strip():
        return None
    try:
        return loads(raw)
    except ValueError:
        raise BadRequestError("The request body is not valid JSON.", error_code=400006, error_name="IotHubFormatError") from None


def ok(body: Any, headers: dict[str, str] | None = None) -> Response:
    """A 200 JSON response."""
    return JSONResponse(body, headers=headers)


# ---- registry ---------------------------------------------------------------------
async def get_device(request: Request) -> Response:
    """``GET /devices/{id}`` (Azure "Devices - Get Identity")."""
    hub = authorize(request, _R)
    return ok((await hub.registry.get(request.path_params["device_id"])).device_json())


async def put_device(request: Request) -> Response:
    """``PUT /devices/{id}`` (Azure "Devices - Create Or Update Identity"); ``If-Match`` to update."""
    hub = authorize(request, _W)
    body = await json_body(request)
    record = await hub.registry.put(
        request.path_params["device_id"], body if body is not None else {}, if_match=request.headers.get("if-match")
    )
    return ok(record.device_json())


async def delete_device(request: Request) -> Response:
    """``DELETE /devices/{id}`` (Azure "Devices - Delete Identity"); 204."""
    hub = authorize(request, _W)
    await hub.registry.delete(request.path_params["device_id"], if_match=request.headers.get("if-match"))
    return Response(status_code=204)


async def list_devices(request: Request) -> Response:
    """``GET /devices?top=N``: a JSON array; ``x-ms-continuation`` (extension) pages on."""
    hub = authorize(request, _R)
    try:
        top = int(request.query_params.get("top", "1000"))
    except ValueError:
        raise BadRequestError("top must be an integer.") from None
    if not 1 <= top <= 10000:
        raise BadRequestError("top must be within [1; 10000].")
    after = request.headers.get("x-ms-continuation", "")
    records = await hub.registry.list(after=after, top=top)
    headers = {"x-ms-continuation": records[-1].device_id} if len(records) == top else None
    return ok([r.device_json() for r in records], headers)


async def bulk_devices(request: Request) -> Response:
    """``POST /devices`` (Azure "Bulk Registry - Update Registry"); 400 when any item failed."""
    hub = authorize(request, _W)
    result = await hub.registry.bulk(await json_body(request))
    return JSONResponse(result, status_code=200 if result["isSuccessful"] else 400)


# ---- twins --------------------------------------------------------------------------
async def get_twin(request: Request) -> Response:
    """``GET /twins/{id}`` (Azure "Devices - Get Twin")."""
    hub = authorize(request, _S, _R)
    return ok((await hub.twins.get(request.path_params["device_id"])).twin_json())


async def update_twin(request: Request) -> Response:
    """``PATCH``/``PUT /twins/{id}`` (Azure "Devices - Update Twin" / "Replace Twin")."""
    hub = authorize(request, _S)
    body = await json_body(request)
    record = await hub.twins.update(
        request.path_params["device_id"],
        body if body is not None else {},
        if_match=request.headers.get("if-match"),
        replace=request.method == "PUT",
    )
    return ok(record.twin_json())


# ---- direct methods -----------------------------------------------------------------
async def invoke_method(request: Request) -> Response:
    """``POST /twins/{id}/methods`` (Azure "Devices - Invoke Method"); 404103 offline, 504101 timeout."""
    hub = authorize(request, _S)
    device_id = request.path_params["device_id"]
    call = parse_method_call(await json_body(request))
    await hub.registry.get(device_id)  # 404001 for an unknown device, before any waiting
    result = await hub.methods.invoke(device_id, call)
    return ok(result.to_json())


async def healthz(request: Request) -> Response:
    """``GET /healthz``: 200 ``{"status": "ok"}`` when ready, else 503 (extension, no auth)."""
    hub = hub_of(request)
    return ok({"status": "ok" if hub.ready else "starting"}) if hub.ready else JSONResponse(
        {"status": "starting"}, status_code=503
    )


def routes() -> list[Route]:
    """The registry, twin, method, health and OpenAPI routes."""
    return [
        Route("/healthz", healthz, methods=["GET"]),
        *openapi_routes(),
        Route("/devices", list_devices, methods=["GET"]),
        Route("/devices", bulk_devices, methods=["POST"]),
        Route("/devices/{device_id}", get_device, methods=["GET"]),
        Route("/devices/{device_id}", put_device, methods=["PUT"]),
        Route("/devices/{device_id}", delete_device, methods=["DELETE"]),
        Route("/twins/{device_id}", get_twin, methods=["GET"]),
        Route("/twins/{device_id}", update_twin, methods=["PATCH", "PUT"]),
        Route("/twins/{device_id}/methods", invoke_method, methods=["POST"]),
    ]
