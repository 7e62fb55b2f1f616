"""Query and jobs REST routes: ``/devices/query`` and ``/jobs/v2`` (docs/iothub-reference.md §3.4-3.6)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from iot_flows._exceptions import BadRequestError
from iot_flows.hub._auth import Permission
from iot_flows.hub.api._routes import authorize, json_body
from iot_flows.jobs import parse_job_status, parse_job_type

__all__ = ["routes"]

_S, _R = Permission.SERVICE_CONNECT, Permission.REGISTRY_READ


def _page_size(request: Request) -> int | None:
    raw = request.headers.get("x-ms-max-item-count") or request.query_params.get("pageSize")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise BadRequestError("x-ms-max-item-count must be an integer.") from None


#: Response header of ``POST /devices/query`` on this hub (absent on Azure IoT Hub).
CONSISTENCY_HEADER = "x-iot-flows-query-consistency"


async def query_devices(request: Request) -> Response:
    """``POST /devices/query`` (Azure "Query - Get Twins"); ``x-ms-max-item-count`` and ``x-ms-continuation`` page it."""
    hub = authorize(request, _S, _R)
    body = await json_body(request)
    text = body.get("query") if isinstance(body, dict) else None
    result = await hub.queries.run(text, page_size=_page_size(request), continuation=request.headers.get("x-ms-continuation"))
    # Queries here run on the store the writes commit to (no index lag as on Azure):
    # clients may confirm writes with a query instead of a GET per twin.
    headers = {"x-ms-item-type": result.item_type, CONSISTENCY_HEADER: "read-your-writes"}
    if result.continuation:
        headers["x-ms-continuation"] = result.continuation
    return Response(result.body(), media_type="application/json", headers=headers)


async def put_job(request: Request) -> Response:
    """``PUT /jobs/v2/{id}`` (Azure "Jobs - Create Scheduled Job")."""
    hub = authorize(request, _S)
    return JSONResponse(await hub.jobs.create(request.path_params["job_id"], await json_body(request)))


async def get_job(request: Request) -> Response:
    """``GET /jobs/v2/{id}`` (Azure "Jobs - Get Scheduled Job")."""
    hub = authorize(request, _S)
    return JSONResponse(await hub.jobs.get(request.path_params["job_id"]))


async def cancel_job(request: Request) -> Response:
    """``POST /jobs/v2/{id}/cancel`` (Azure "Jobs - Cancel Scheduled Job")."""
    hub = authorize(request, _S)
    return JSONResponse(await hub.jobs.cancel(request.path_params["job_id"]))


async def query_jobs(request: Request) -> Response:
    """``GET /jobs/v2/query?jobType=&jobStatus=``: a JSON array, paged with ``x-ms-continuation``."""
    hub = authorize(request, _S)
    size = min(max(_page_size(request) or 100, 1), 1000)
    after = request.headers.get("x-ms-continuation") or request.query_params.get("continuationToken") or ""
    job_type, status = request.query_params.get("jobType"), request.query_params.get("jobStatus")
    docs = await hub.jobs.list(
        job_type=parse_job_type(job_type).value if job_type else None,
        status=parse_job_status(status).value if status else None,
        after=after,
        limit=size + 1,
    )
    headers = {"x-ms-item-type": "jobResponse"}
    if len(docs) > size:
        docs = docs[:size]
        headers["x-ms-continuation"] = f"{docs[-1]['createdTime']}|{docs[-1]['jobId']}"
    return JSONResponse(docs, headers=headers)


def routes() -> list[Route]:
    """The query and ``/jobs/v2`` routes."""
    return [
        Route("/devices/query", query_devices, methods=["POST"]),
        Route("/jobs/v2/query", query_jobs, methods=["GET"]),
        Route("/jobs/v2/{job_id}", put_job, methods=["PUT"]),
        Route("/jobs/v2/{job_id}", get_job, methods=["GET"]),
        Route("/jobs/v2/{job_id}/cancel", cancel_job, methods=["POST"]),
    ]


async def read_changes(request: Request) -> Response:
    """Extension: ``GET /iot-flows/changes?since=N&wait=S&limit=L`` (long poll of the change stream)."""
    hub = authorize(request, _S)
    try:
        since = int(request.query_params.get("since", "0"))
        wait = min(float(request.query_params.get("wait", "0")), 60.0)
        limit = min(max(int(request.query_params.get("limit", "1000")), 1), 10000)
    except ValueError:
        raise BadRequestError("since, wait and limit must be numbers.") from None
    if since < 0:  # "from now": skip everything the hub kept so far
        since = hub.changes.last_sequence
    await hub.changes.wait(since, wait)
    changes, truncated = hub.changes.read(since, limit)
    last = changes[-1]["sequence"] if changes else max(since, 0)
    return JSONResponse({"changes": changes, "next": last, "truncated": truncated})


def extension_routes() -> list[Route]:
    """Routes beyond Azure: the change feed ``/iot-flows/changes``."""
    return [Route("/iot-flows/changes", read_changes, methods=["GET"])]
