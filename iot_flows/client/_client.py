"""``HubClient``: async httpx client of IoT Hub's service REST contract.

The same client talks to the bundled hub and to Azure IoT Hub, because both speak
the contract of docs/iothub-reference.md §3: SAS-signed requests with ``api-version=2021-04-12``,
quoted ``If-Match``, ``x-ms-continuation`` paging, and error bodies carrying IoT Hub's
``errorCode``. Responses are translated once, here, into the project's exception
hierarchy; each error knows whether it is worth retrying, and a retryable error means
the request is safe to send again (rules in ``iot_flows.client._repeat``).
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from iot_flows._exceptions import (
    ConnectError,
    HubError,
    InvalidJobTransitionError,
    JobAlreadyExistsError,
    TransportError,
    error_for_status,
)
from iot_flows._sas import ConnectionString
from iot_flows._types import JsonObject, MethodResult
from iot_flows.client._conditions import MAX_BULK_DEVICES, chunks, quote_string
from iot_flows.client._repeat import method_never_delivered, same_job_spec

__all__ = ["API_VERSION", "HubClient", "QueryPage"]

API_VERSION = "2021-04-12"
#: Renew the cached service token this long before it expires.
TOKEN_RENEW_MARGIN = 300


@dataclass(frozen=True, slots=True)
class QueryPage:
    """One page of ``POST /devices/query`` (or ``/jobs/v2/query``)."""

    items: list[JsonObject]
    item_type: str | None
    continuation: str | None = field(default=None)


def _path(*segments: str) -> str:
    """A URL path from raw segments, each percent-encoded whole (``quote(s, safe='')``).

    Device and job ids may hold ``? % # / : @ ' $ ; = ,`` and more (docs/iothub-reference.md §1.5); the
    official service SDKs encode every id segment this way (msrest ``quote(id, safe='')``,
    Node ``encodeURIComponent``, C# ``UrlEncode``). Unencoded, ``demo?x=1`` addresses the
    device ``demo`` and ``demo%41`` addresses ``demoA``. The ids ``.`` and ``..`` (valid
    device ids) are sent as ``%2E`` so that no URL layer resolves them as dot segments.
    """
    return "".join("/" + (quote(s, safe="") if s.strip(".") else s.replace(".", "%2E")) for s in segments)


def _quoted(etag: str) -> str:
    return etag if etag.startswith('"') else f'"{etag}"'


def _error_from_response(response: httpx.Response) -> HubError:
    """Parse IoT Hub's error body (JSON string in ``Message``, or ``ErrorCode:Name;text``)."""
    name = response.headers.get("iothub-errorcode")
    code: int | None = None
    message = response.text
    try:
        body = response.json()
        raw = body.get("Message", body.get("message", "")) if isinstance(body, dict) else ""
        if isinstance(raw, str) and raw.startswith("ErrorCode:"):
            head, _, message = raw.partition(";")
            name = name or head[len("ErrorCode:") :]
        elif isinstance(raw, str) and raw.startswith("{"):
            inner = json.loads(raw)
            code = int(inner.get("errorCode")) if inner.get("errorCode") is not None else None
            message = inner.get("message", raw)
        elif raw:
            message = raw
        if isinstance(body, dict) and isinstance(body.get("errorCode"), int):
            code = body["errorCode"]
    except (ValueError, TypeError):
        pass
    if code is None and name == "DeviceNotFound":
        code = 404001
    err = error_for_status(response.status_code, message, code, name)
    retry_after = response.headers.get("retry-after")
    if retry_after and hasattr(err, "retry_after"):
        try:
            err.retry_after = float(retry_after)
        except ValueError:
            pass
    return err


class HubClient:
    """Service-side client: registry, twins, direct methods, queries and jobs.

    Example::

        async with HubClient(connection_string, base_url="http://127.0.0.1:8080") as hub:
            twin = await hub.get_twin("dev1")
    """

    def __init__(
        self,
        connection_string: str,
        *,
        base_url: str | None = None,
        verify: bool | str | ssl.SSLContext = True,
        timeout: float = 30.0,
        token_ttl: int = 3600,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._cs = ConnectionString.parse(connection_string)
        if not self._cs.shared_access_key_name:
            raise ValueError("HubClient needs a service connection string (with SharedAccessKeyName).")
        self.base_url = (base_url or f"https://{self._cs.host_name}").rstrip("/")
        if isinstance(verify, str):
            verify = ssl.create_default_context(cafile=verify)
        if transport is None:
            # h11 writes headers and body separately: without TCP_NODELAY, Nagle plus the
            # peer's delayed ACK add ~40 ms to every request with a body.
            transport = httpx.AsyncHTTPTransport(
                verify=verify, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
            )
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, transport=transport)
        self._token_ttl = token_ttl
        self._token: str | None = None
        self._token_expiry = 0.0

    @property
    def host_name(self) -> str:
        """The IoT Hub host name of the connection string (``HostName=``), e.g. ``127.0.0.1``
        or ``myhub.azure-devices.net``; the audience of the SAS tokens this client signs
        (docs/azure-contract.md §5, §8)."""
        return self._cs.host_name

    async def __aenter__(self) -> HubClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connection pool; the client cannot send requests afterwards."""
        await self._http.aclose()

    def _authorization(self) -> str:
        now = time.time()
        if self._token is None or now > self._token_expiry - TOKEN_RENEW_MARGIN:
            self._token = self._cs.token(ttl=self._token_ttl)
            self._token_expiry = now + self._token_ttl
        return self._token

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        timeout: float | None = None,
        allow_statuses: tuple[int, ...] = (),
    ) -> httpx.Response:
        """Send one signed request; raise the matching :class:`HubError` on an error status
        (except those in ``allow_statuses``, which the caller inspects itself)."""
        hdrs = {"Authorization": self._authorization(), "Accept": "application/json"}
        if headers:
            hdrs.update(headers)
        query = {"api-version": API_VERSION, **(params or {})}
        kwargs: dict[str, Any] = {"headers": hdrs, "params": query}
        if json_body is not None:
            kwargs["content"] = json.dumps(json_body).encode()
            hdrs["Content-Type"] = "application/json; charset=utf-8"
        if timeout is not None:
            kwargs["timeout"] = timeout
        try:
            response = await self._http.request(method, path, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # nothing was sent
            raise ConnectError(f"cannot reach {self.base_url}: {exc}") from exc
        except httpx.HTTPError as exc:
            raise TransportError(f"{method} {path} failed: {exc!r}") from exc
        if response.status_code >= 400 and response.status_code not in allow_statuses:
            raise _error_from_response(response)
        return response

    # ---- registry ---------------------------------------------------------------------
    async def get_device(self, device_id: str) -> JsonObject:
        """The device identity (``GET /devices/{id}``): ``deviceId``, ``etag``, ``status``,
        ``authentication``, ``connectionState``... as IoT Hub's registry returns it. The id is
        percent-encoded in the path (docs/service-client.md §1).

        Raises:
            DeviceNotFoundError: 404001, no such device.
            TransportError: the hub could not be reached or the connection failed.
        """
        return (await self.request("GET", _path("devices", device_id))).json()  # type: ignore[no-any-return]

    async def create_device(
        self, device_id: str, *, status: str = "enabled", primary_key: str = "", secondary_key: str = ""
    ) -> JsonObject:
        """Create a device identity with SAS authentication (``PUT /devices/{id}``).

        ``status`` is ``enabled`` or ``disabled``; empty keys let the hub generate base64
        keys. Returns the created identity, keys and ``etag`` included.

        Raises:
            DeviceAlreadyExistsError: 409001, the id is taken.
            BadRequestError: an invalid id, status or key (docs/azure-contract.md §3 limits).
        """
        body = {
            "deviceId": device_id,
            "status": status,
            "authentication": {"type": "sas", "symmetricKey": {"primaryKey": primary_key, "secondaryKey": secondary_key}},
        }
        return (await self.request("PUT", _path("devices", device_id), json_body=body)).json()  # type: ignore[no-any-return]

    async def update_device(self, device: JsonObject, *, etag: str = "*") -> JsonObject:
        """Replace a device identity (``PUT /devices/{id}`` with ``If-Match``); ``device`` is the
        identity as :meth:`get_device` returns it, changed. ``etag="*"`` overwrites whatever is
        stored (docs/azure-contract.md §7). Returns the stored identity with its new ``etag``.

        Raises:
            DeviceNotFoundError: 404001, no such device.
            PreconditionFailedError: 412, ``etag`` does not match the stored identity.
        """
        response = await self.request(
            "PUT", _path("devices", device["deviceId"]), json_body=device, headers={"If-Match": _quoted(etag)}
        )
        return response.json()  # type: ignore[no-any-return]

    async def delete_device(self, device_id: str, *, etag: str = "*") -> None:
        """Delete a device identity and its twin (``DELETE /devices/{id}`` with ``If-Match``;
        docs/azure-contract.md §7).

        Raises:
            DeviceNotFoundError: 404001, no such device.
            PreconditionFailedError: 412, ``etag`` does not match.
        """
        await self.request("DELETE", _path("devices", device_id), headers={"If-Match": _quoted(etag)})

    async def bulk_devices(self, items: list[JsonObject]) -> JsonObject:
        """Azure's bulk registry operation, sent as calls of at most 100 items each.

        Per-device failures are data: the hub answers 400 with ``isSuccessful: false``
        and an ``errors`` list, which is returned rather than raised. Results of several
        calls are merged: ``{"isSuccessful": bool, "errors": [...], "warnings": [...]}``.
        """
        merged: JsonObject = {"isSuccessful": True, "errors": [], "warnings": []}
        for batch in chunks(items, MAX_BULK_DEVICES):
            response = await self.request("POST", "/devices", json_body=batch, allow_statuses=(400,))
            body = response.json()
            if response.status_code == 400 and not (isinstance(body, dict) and "isSuccessful" in body):
                raise _error_from_response(response)
            if len(items) <= MAX_BULK_DEVICES:
                return body  # type: ignore[no-any-return]
            merged["isSuccessful"] = merged["isSuccessful"] and bool(body.get("isSuccessful"))
            merged["errors"] += body.get("errors") or []
            merged["warnings"] += body.get("warnings") or []
        return merged

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

    async def set_device_status(self, device_id: str, status: str, *, reason: str | None = None) -> JsonObject:
        """Enable or disable a device identity (``status`` ``enabled``/``disabled``), keeping
        its keys: read, change ``status``, write back under the read ``etag``.

        Raises:
            DeviceNotFoundError: no such device; PreconditionFailedError: changed meanwhile.
        """
        device = await self.get_device(device_id)
        device["status"] = status
        if reason is not None:
            device["statusReason"] = reason
        return await self.update_device(device, etag=str(device.get("etag") or "*"))

