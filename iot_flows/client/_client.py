"""``HubClient``: async httpx client of IoT Hub's service REST contract.

The same client talks to the bundled hub and to Azure IoT Hub, because both speak
the contract of docs/iothub-reference.md §3: SAS-signed requests with ``api-version=2021-04-12``,
quoted ``If-Match``, ``x-ms-continuation`` paging, and error bodies carrying IoT Hub's
``errorCode``. Responses are translated once (``_session``) into the project's exception
hierarchy; each error knows whether it is worth retrying, and a retryable error means
the request is safe to send again (rules in ``iot_flows.client._repeat``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from iot_flows._exceptions import HubError, InvalidJobTransitionError, JobAlreadyExistsError, TransportError
from iot_flows._types import JsonObject, MethodResult
from iot_flows.client._conditions import quote_string
from iot_flows.client._registry import RegistryEndpoints
from iot_flows.client._repeat import method_never_delivered, same_job_spec
from iot_flows.client._session import API_VERSION, _path, _quoted

__all__ = ["API_VERSION", "HubClient", "QueryPage"]


@dataclass(frozen=True, slots=True)
class QueryPage:
    """One page of ``POST /devices/query`` (or ``/jobs/v2/query``)."""

    items: list[JsonObject]
    item_type: str | None
    continuation: str | None = field(default=None)
    #: True when the hub says its queries read their own writes (an iot-flows hub, header
    #: ``x-iot-flows-query-consistency: read-your-writes``); Azure's queries lag.
    read_your_writes: bool = field(default=False)


class HubClient(RegistryEndpoints):
    """Service-side client: registry, twins, direct methods, queries and jobs.

    Example::

        async with HubClient(connection_string, base_url="http://127.0.0.1:8080") as hub:
            twin = await hub.get_twin("dev1")
    """

    # ---- twins --------------------------------------------------------------------------
    async def get_twin(self, device_id: str) -> JsonObject:
        """The device twin (``GET /twins/{id}``): ``deviceId``, ``etag``, ``version``, ``tags``,
        ``properties.desired`` / ``properties.reported`` with their ``$version`` and ``$metadata``.

        Raises:
            DeviceNotFoundError: 404001, no such device.
        """
        return (await self.request("GET", _path("twins", device_id))).json()  # type: ignore[no-any-return]

    async def update_twin(self, device_id: str, patch: JsonObject, *, etag: str = "*") -> JsonObject:
        """Merge-patch tags and/or desired properties (``null`` deletes); returns the full twin."""
        response = await self.request(
            "PATCH", _path("twins", device_id), json_body=patch, headers={"If-Match": _quoted(etag)}
        )
        return response.json()  # type: ignore[no-any-return]

    async def replace_twin(self, device_id: str, twin: JsonObject, *, etag: str = "*") -> JsonObject:
        """Replace tags and desired properties (``PUT /twins/{id}`` with ``If-Match``); keys left
        out are removed. Reported properties are the device's and are not changed. Returns the
        full twin (docs/azure-contract.md §7 for ``etag``).

        Raises:
            DeviceNotFoundError: 404001, no such device.
            PreconditionFailedError: 412, ``etag`` does not match.
            BadRequestError: the twin breaks a documented limit (docs/azure-contract.md §3).
        """
        response = await self.request("PUT", _path("twins", device_id), json_body=twin, headers={"If-Match": _quoted(etag)})
        return response.json()  # type: ignore[no-any-return]

    # ---- direct methods -------------------------------------------------------------------
    async def invoke_device_method(
        self,
        device_id: str,
        method_name: str,
        payload: Any = None,
        *,
        response_timeout: int = 30,
        connect_timeout: int = 0,
    ) -> MethodResult:
        """Invoke a direct method; the device's status and payload come back as data.

        Raises:
            DeviceNotOnlineError: 404103, the device is offline (retryable: never delivered).
            GatewayTimeoutError: 504101, no answer in time; the device may have run the
                method, so ``retryable`` is False.
            TransportError: the connection failed; retryable only when it could not be
                opened (:class:`ConnectError`), never after the request was sent.
        """
        body = {
            "methodName": method_name,
            "payload": payload,
            "responseTimeoutInSeconds": response_timeout,
            "connectTimeoutInSeconds": connect_timeout,
        }
        # The HTTP timeout must cover connect + response plus wire time (the C# SDK adds 15 s).
        try:
            response = await self.request(
                "POST", _path("twins", device_id, "methods"), json_body=body, timeout=response_timeout + connect_timeout + 15
            )
        except (HubError, TransportError) as exc:
            if not method_never_delivered(exc):
                exc.retryable = False  # type: ignore[misc]  # the device may have run it: never repeat
            raise
        data = response.json()
        return MethodResult(status=int(data["status"]), payload=data.get("payload"))

    # ---- queries ----------------------------------------------------------------------------
    async def query_page(self, query: str, *, continuation: str | None = None, page_size: int = 100) -> QueryPage:
        """One page of an IoT Hub query (``POST /devices/query``), e.g.
        ``SELECT * FROM devices WHERE tags.site = 'a'``.

        ``page_size`` (items per page) goes in ``x-ms-max-item-count``;
        pass the previous page's ``continuation`` to read the next. Returns
        :class:`QueryPage` (``items``, ``item_type`` from ``x-ms-item-type``, ``continuation``
        or ``None`` on the last page).

        Raises:
            BadRequestError: 400, the query does not parse or uses an unsupported clause.
        """
        headers = {"x-ms-max-item-count": str(page_size)}
        if continuation:
            headers["x-ms-continuation"] = continuation
        response = await self.request("POST", "/devices/query", json_body={"query": query}, headers=headers)
        return QueryPage(
            items=response.json(),
            item_type=response.headers.get("x-ms-item-type"),
            continuation=response.headers.get("x-ms-continuation") or None,
            read_your_writes=response.headers.get("x-iot-flows-query-consistency") == "read-your-writes",
        )

    async def query(self, query: str, *, page_size: int = 100) -> AsyncIterator[JsonObject]:
        """Iterate over every result, following ``x-ms-continuation`` until it is absent."""
        continuation: str | None = None
        while True:
            page = await self.query_page(query, continuation=continuation, page_size=page_size)
            for item in page.items:
                yield item
            if not page.continuation:
                return
            continuation = page.continuation

    async def query_all(self, query: str, *, page_size: int = 100) -> list[JsonObject]:
        """Every result of ``query`` as one list (:meth:`query` collected); mind the size of the
        result set (docs/service-client.md §3). Raises what :meth:`query_page` raises."""
        return [item async for item in self.query(query, page_size=page_size)]

    # ---- jobs ---------------------------------------------------------------------------------
    async def create_job(self, job_id: str, job: JsonObject) -> JsonObject:
        """Create a job (``PUT /jobs/v2/{id}``); safe to repeat.

        A 409104 JobAlreadyExists answer (a first PUT that reached the hub but whose
        response was lost) reads the job back and returns it when it has the same spec.

        Raises:
            JobAlreadyExistsError: the id holds a job with another spec.
        """
        body = {"jobId": job_id, **job}
        try:
            return (await self.request("PUT", _path("jobs", "v2", job_id), json_body=body)).json()  # type: ignore[no-any-return]
        except JobAlreadyExistsError:
            existing = await self.get_job(job_id)
            if same_job_spec(body, existing):
                return existing
            raise

    async def get_job(self, job_id: str) -> JsonObject:
        """A job (``GET /jobs/v2/{id}``): ``jobId``, ``type``, ``status`` (docs/azure-contract.md
        §6 vocabulary), ``startTime``/``endTime`` (ISO 8601 UTC) and ``deviceJobStatistics``.

        Raises:
            JobNotFoundError: 404, no such job.
        """
        return (await self.request("GET", _path("jobs", "v2", job_id))).json()  # type: ignore[no-any-return]

    async def cancel_job(self, job_id: str) -> JsonObject:
        """Cancel a job; safe to repeat (a job already ``cancelled`` is returned as is).

        Raises:
            InvalidJobTransitionError: the job already ended another way (409105).
        """
        try:
            return (await self.request("POST", _path("jobs", "v2", job_id, "cancel"))).json()  # type: ignore[no-any-return]
        except InvalidJobTransitionError:
            existing = await self.get_job(job_id)
            if existing.get("status") == "cancelled":
                return existing
            raise

    async def query_jobs(self, *, job_type: str | None = None, job_status: str | None = None) -> list[JsonObject]:
        """Every job matching ``job_type`` (``scheduleDeviceMethod``/``scheduleUpdateTwin``) and
        ``job_status`` (docs/azure-contract.md §6), from ``GET /jobs/v2/query``, following
        ``x-ms-continuation`` until it is absent. Returns the job documents as :meth:`get_job`.

        Raises:
            BadRequestError: an unknown type or status.
        """
        params = {k: v for k, v in (("jobType", job_type), ("jobStatus", job_status)) if v}
        out: list[JsonObject] = []
        continuation: str | None = None
        while True:
            headers = {"x-ms-continuation": continuation} if continuation else None
            response = await self.request("GET", "/jobs/v2/query", params=params, headers=headers)
            body = response.json()
            out.extend(body if isinstance(body, list) else body.get("items", []))
            continuation = response.headers.get("x-ms-continuation")
            if not continuation:
                return out

    async def query_device_jobs(self, job_id: str, *, status: str | None = None) -> list[JsonObject]:
        """Per-device records of a job (``SELECT * FROM devices.jobs``)."""
        where = f"devices.jobs.jobId = {quote_string(job_id)}"
        if status:
            where += f" AND devices.jobs.status = {quote_string(status)}"
        return await self.query_all(f"SELECT * FROM devices.jobs WHERE {where}")


    # ---- iot-flows hub extension ---------------------------------------------------------
    async def read_changes(self, since: int = 0, *, wait: float = 0.0, limit: int = 1000) -> JsonObject:
        """Long-poll the bundled hub's change stream (``GET /iot-flows/changes``; not on Azure)."""
        response = await self.request(
            "GET",
            "/iot-flows/changes",
            params={"since": str(since), "wait": str(wait), "limit": str(limit)},
            timeout=wait + 30,
        )
        return response.json()  # type: ignore[no-any-return]

    # ---- operator verbs (``iot-flows device ...``, ``iot-flows query``) --------------------
    async def list_devices(self, *, top: int | None = None) -> list[JsonObject]:
        """Device twins of the registry (``SELECT * FROM devices``, every page, at most ``top``).

        Azure deprecated ``GET /devices``; ``az iot hub device-identity list`` queries too.
        """
        return await self.query_top("SELECT * FROM devices", top=top)

    async def query_top(self, query: str, *, top: int | None = None, page_size: int = 100) -> list[JsonObject]:
        """Every result of ``query`` (following ``x-ms-continuation``), or the first ``top``."""
        out: list[JsonObject] = []
        size = min(page_size, top) if top else page_size
        async for item in self.query(query, page_size=max(size, 1)):
            out.append(item)
            if top is not None and len(out) >= top:
                break
        return out
