"""Signed requests to IoT Hub's service REST contract, and their errors translated.

The base of :class:`~iot_flows.client.HubClient`: SAS tokens (renewed before they
expire), ``api-version``, percent-encoded id segments, quoted ``If-Match`` values, and
IoT Hub's error bodies turned into the project's exception hierarchy.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from typing import Any, Self
from urllib.parse import quote

import httpx

from iot_flows._exceptions import ConnectError, HubError, TransportError, error_for_status
from iot_flows._sas import ConnectionString

__all__ = ["API_VERSION", "HubSession"]

API_VERSION = "2021-04-12"
#: Renew the cached service token this long before it expires.
TOKEN_RENEW_MARGIN = 300


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


class HubSession:
    """Connection of a :class:`~iot_flows.client.HubClient`: one signed request at a time.

    Holds the parsed service connection string, the HTTP connection pool and the
    cached SAS token; :meth:`request` sends a request and raises IoT Hub's error.
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

    async def __aenter__(self) -> Self:
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
