"""Server-side HTTP idle limits for the REST endpoint (issue 12 item 5).

uvicorn closes a keep-alive connection that stays idle after a response
(``timeout_keep_alive``, 5 s, well inside the 4-minute idle timeout of Azure's front end),
but a socket that never completes its request headers (silent after connecting, or a
"slowloris" trickle of header bytes) is held forever. :func:`guarded_http_protocol` wraps
uvicorn's HTTP protocol so that such a connection is closed after
:data:`REQUEST_HEADER_TIMEOUT` seconds, the HTTP counterpart of the MQTT endpoint's
CONNECT timeout. A request whose headers have arrived is never cut by this timer, nor is
a connection upgraded to a WebSocket (MQTT over WebSockets keeps the MQTT limits).
"""

from __future__ import annotations

import asyncio
from typing import Any

from iot_flows._exceptions import BadRequestError
from iot_flows.hub.api._errors import error_response

__all__ = ["REQUEST_HEADER_TIMEOUT", "guarded_http_protocol"]

#: Seconds a connection may take to deliver complete request headers (first request, or
#: the next one on a kept-alive connection).
REQUEST_HEADER_TIMEOUT = 10.0


def guarded_http_protocol(header_timeout: float = REQUEST_HEADER_TIMEOUT) -> type:
    """uvicorn's HTTP protocol class (``http="auto"``) with a request-header timeout.

    Pass the result as ``uvicorn.Config(http=...)``. ``header_timeout`` is in seconds.
    """
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    base: Any = AutoHTTPProtocol

    class HeaderTimeoutProtocol(base):  # type: ignore[misc]
        _header_timer: asyncio.TimerHandle | None = None

        def _arm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._header_timer = self.loop.call_later(header_timeout, self._header_timeout)

        def _header_timeout(self) -> None:
            self._header_timer = None
            waiting_for_headers = self.cycle is None or self.cycle.response_complete
            if waiting_for_headers and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            self._arm_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_header_timer()

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def handle_websocket_upgrade(self, *args: Any) -> None:
            self._cancel_header_timer()  # MQTT over WebSockets: its keep-alive rules take over
            super().handle_websocket_upgrade(*args)

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            # A request the HTTP parser refuses (a control character in a header, a broken
            # request line) never reaches the app: answer it in IoT Hub's error format too,
            # not uvicorn's text/plain (httptools refuses more than h11).
            response = error_response(BadRequestError(f"Invalid HTTP request: {msg}"))
            head = [b"HTTP/1.1 400 Bad Request"]
            head += [k.encode("latin-1") + b": " + v.encode("latin-1") for k, v in response.headers.items()]
            head.append(b"connection: close")
            self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + bytes(response.body))
            self.transport.close()

    return HeaderTimeoutProtocol
