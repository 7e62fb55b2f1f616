"""One MQTT connection: a paho client whose socket is driven by the asyncio loop.

No thread per device, no ``loop_start()``: as in aiomqtt, paho's socket callbacks
hook it into the running loop (``on_socket_open`` -> ``add_reader(loop_read)``,
``on_socket_register_write`` -> write on the next loop turn, ``add_writer`` only while
the kernel buffer is full) and one shared ticker calls ``loop_misc()`` for every open
connection once a second (keep-alive pings), instead of one timer task per device.

Two departures from aiomqtt, both for fleets of thousands of devices:

* The TCP connection and the TLS handshake are made by asyncio (``_socket.py``:
  ``sock_connect``, a non-blocking handshake), then handed to paho through ``_create_socket``. paho's
  own ``connect()`` blocks (aiomqtt runs it in a thread pool); here nothing blocks and
  no thread is involved. Optionally the socket binds a source address first (beyond
  ~14k sockets from one address to one port, the kernel's port search slows down).
* A connection object lives for one connection only. paho keeps un-acknowledged QoS 1
  messages and re-sends them on ``reconnect()``; a fresh client per connection means a
  request that failed with :class:`ConnectionLostError` is never replayed behind the
  caller's back.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from iot_flows._exceptions import (
    ConnectError,
    ConnectionLostError,
    ProtocolError,
    RequestTimeoutError,
    UnauthorizedError,
)
from iot_flows.device._socket import TICK_SECONDS, Paho, open_socket, ticker

__all__ = ["MqttConnection", "TICK_SECONDS"]

log = logging.getLogger(__name__)

_NOT_AUTHORIZED = {134, 135}  # paho's reason codes for CONNACK 4 (bad credentials) and 5


class MqttConnection:
    """One MQTT 3.1.1 connection (CONNECT ... DISCONNECT) on the running loop.

    ``on_message(topic, payload)`` gets every inbound PUBLISH; ``on_lost(exc)`` is called
    once when the connection ends for any reason other than :meth:`close`.
    """

    __slots__ = (
        "client_id", "_loop", "_paho", "_sock", "_connack", "_acks", "_closed", "_flush_handle",
        "_writer_added", "_established", "on_message", "on_lost", "__weakref__",
    )  # fmt: skip

    def __init__(
        self,
        client_id: str,
        *,
        on_message: Callable[[str, bytes], None],
        on_lost: Callable[[Exception], None],
    ) -> None:
        self.client_id = client_id
        self.on_message = on_message
        self.on_lost = on_lost
        self._loop = asyncio.get_running_loop()
        self._paho: Paho | None = None
        self._sock: Any = None
        self._connack: asyncio.Future[bool] | None = None
        self._acks: dict[int, asyncio.Future[Any]] = {}
        self._closed = False
        self._flush_handle: asyncio.Handle | None = None
        self._writer_added = False
        self._established = False

    @property
    def is_open(self) -> bool:
        """True between CONNACK and the end of the connection."""
        return self._paho is not None and not self._closed and self._paho.is_connected()

    # ---- connect ------------------------------------------------------------------
    async def open(
        self,
        host: str,
        port: int,
        *,
        username: str,
        password: str,
        keepalive: int = 60,
        clean_session: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        bind_address: str | None = None,
        timeout: float = 30.0,
    ) -> bool:
        """Connect and wait for CONNACK; return the session-present flag.

        Raises :class:`UnauthorizedError` when the hub refuses the credentials
        (CONNACK 4 or 5) and :class:`ConnectError` for any other failure.
        """
        try:
            async with asyncio.timeout(timeout):
                try:
                    sock = await open_socket(
                        host, port, ssl_context=ssl_context, server_hostname=server_hostname,
                        bind_address=bind_address,
                    )  # fmt: skip
                except ssl.SSLError as exc:
                    raise ConnectError(f"TLS handshake with {host}:{port} failed: {exc}") from exc
                except OSError as exc:
                    raise ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
                self._start(sock, username, password, keepalive, clean_session, host, port)
                assert self._connack is not None
                return await self._connack
        except TimeoutError:
            self._teardown()
            raise ConnectError(f"no CONNACK from {host}:{port} within {timeout:g} s") from None
        except BaseException:
            self._teardown()
            raise

    def _start(
        self, sock: Any, username: str, password: str, keepalive: int, clean_session: bool, host: str, port: int
    ) -> None:
        paho = Paho(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
            reconnect_on_failure=False,
        )
        paho.max_inflight_messages_set(1000)
        paho.username_pw_set(username, password)
        paho.on_socket_open = self._on_socket_open
        paho.on_socket_close = self._on_socket_close
        paho.on_socket_register_write = self._on_register_write
        paho.on_socket_unregister_write = self._on_unregister_write
        paho.on_connect = self._on_connect
        paho.on_disconnect = self._on_disconnect
        paho.on_message = self._on_message
        paho.on_subscribe = self._on_suback
        # on_publish is set only while a PUBACK is awaited: paho also calls it for every
        # QoS 0 publish, building a ReasonCode and Properties object each time.
        paho._prepared = sock
        self._paho = paho
        self._sock = sock
        self._connack = self._loop.create_future()
        paho.connect_async(host, port, keepalive)
        paho.reconnect()  # uses the prepared socket; queues CONNECT; never blocks
        ticker(self._loop).add(paho, keepalive)

    # ---- paho socket callbacks (all on the loop thread) ---------------------------
    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        try:  # Nagle + delayed ACK add 40-90 ms to every request/response otherwise
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        # File descriptors, not socket objects: selectors format a socket's repr for
        # every lookup miss, which costs more than the rest of the registration.
        self._loop.add_reader(sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        paho = self._paho
        if paho is None:
            return
        paho.loop_read()
        # TLS may hold decrypted bytes the kernel no longer reports as readable.
        sock = self._sock
        if isinstance(sock, ssl.SSLSocket):
            tls: ssl.SSLSocket = sock  # not narrowed by the identity check below
            while paho.socket() is sock and tls.pending():
                paho.loop_read()

    def _on_socket_close(self, client: Any, userdata: Any, sock: Any) -> None:
        fd = sock.fileno()
        self._loop.remove_reader(fd)
        if self._writer_added:
            self._loop.remove_writer(fd)
            self._writer_added = False

    def _in_paho_callback(self) -> bool:
        # paho holds this (non-reentrant) lock while it runs one of our callbacks; code
        # that may run paho callbacks itself (loop_write, closing the socket) must then
        # wait for the next loop turn. Single-threaded, so "locked" means "on our stack".
        return self._paho is not None and self._paho._in_callback_mutex.locked()

    def _on_register_write(self, client: Any, userdata: Any, sock: Any) -> None:
        # Write at once: deferring every write to the next loop turn makes a simulator
        # and a hub fall into lock-step (each waits for the other's whole batch). Only
        # when the kernel buffer is full do we need the selector's help.
        if not self._in_paho_callback():
            self._flush()
        elif self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _on_unregister_write(self, client: Any, userdata: Any, sock: Any) -> None:
        if self._writer_added:
            self._loop.remove_writer(sock.fileno())
            self._writer_added = False

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        paho = self._paho
        if paho is None or paho.socket() is None:
            return
        paho.loop_write()
        sock = paho.socket()
        if sock is not None and paho.want_write() and not self._writer_added:
            self._loop.add_writer(sock.fileno(), self._flush)
            self._writer_added = True

    # ---- paho protocol callbacks ----------------------------------------------------
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        future = self._connack
        if future is None or future.done():
            return
        if not reason.is_failure:
            self._established = True
            future.set_result(bool(flags.session_present))
        elif reason.value in _NOT_AUTHORIZED:
            future.set_exception(
                UnauthorizedError(f"the hub refused {self.client_id!r}: {reason} (CONNACK {_connack_code(reason)})")
            )
        else:
            future.set_exception(ConnectError(f"the hub refused {self.client_id!r}: {reason}"))

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(ConnectError(f"connection closed before CONNACK ({reason})"))
        if self._closed:
            return
        self._closed = True
        exc = ConnectionLostError(f"connection of {self.client_id!r} lost ({reason})")
        self._fail_acks(exc)
        self._ticker_discard()
        if self._established:  # a failed open() raises instead
            self.on_lost(exc)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        self.on_message(message.topic, message.payload)

    def _on_ack(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        future = self._acks.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(None)

    def _on_suback(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        future = self._acks.pop(mid, None)
        if future is not None and not future.done():
            future.set_result([int(code.value) for code in codes])

    # ---- requests -------------------------------------------------------------------
    def _require(self) -> Paho:
        if self._paho is None or self._closed:
            raise ConnectionLostError(f"{self.client_id!r} is not connected")
        return self._paho

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> int:
        """Queue a PUBLISH (written at once when the socket takes it); return its message id.

        Raises :class:`ConnectionLostError` when the connection is closed."""
        info = self._require().publish(topic, payload, qos=qos)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionLostError(f"publish from {self.client_id!r} failed: {mqtt.error_string(info.rc)}")
        return int(info.mid)

    async def publish_acked(self, topic: str, payload: bytes, timeout: float) -> None:
        """Publish at QoS 1 and wait up to ``timeout`` seconds for the PUBACK.

        Raises :class:`RequestTimeoutError` or :class:`ConnectionLostError`."""
        future: asyncio.Future[Any] = self._loop.create_future()
        paho = self._require()
        paho.on_publish = self._on_ack
        mid = self.publish(topic, payload, qos=1)
        if mid in self._acks:  # paho's ids wrap at 65535
            raise ProtocolError("too many unacknowledged publishes")
        self._acks[mid] = future
        try:
            async with asyncio.timeout(timeout):
                await future
        except TimeoutError:
            raise RequestTimeoutError(f"{self.client_id!r}: no PUBACK within {timeout:g} s") from None
        finally:
            self._acks.pop(mid, None)
            if not self._acks:
                paho.on_publish = None

    async def subscribe(self, filters: list[str], timeout: float) -> list[int]:
        """Subscribe at QoS 1; return the granted codes from the SUBACK (0x80: refused).

        Raises :class:`RequestTimeoutError` after ``timeout`` seconds or
        :class:`ConnectionLostError`."""
        future: asyncio.Future[Any] = self._loop.create_future()
        rc, mid = self._require().subscribe([(f, 1) for f in filters])
        if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise ConnectionLostError(f"subscribe from {self.client_id!r} failed: {mqtt.error_string(rc)}")
        self._acks[mid] = future
        try:
            async with asyncio.timeout(timeout):
                return await future  # type: ignore[no-any-return]
        except TimeoutError:
            raise RequestTimeoutError(f"{self.client_id!r}: no SUBACK within {timeout:g} s") from None
        finally:
            self._acks.pop(mid, None)

    # ---- close ----------------------------------------------------------------------
    def close(self, *, graceful: bool = True) -> None:
        """End the connection now: DISCONNECT first when ``graceful``, else just close.

        Pending acknowledgements fail with :class:`ConnectionLostError`; ``on_lost``
        is not called (the owner asked for this).
        """
        already_closed, self._closed = self._closed, True
        if not already_closed:
            self._fail_acks(ConnectionLostError(f"connection of {self.client_id!r} closed"))
        if self._in_paho_callback():
            self._loop.call_soon(self._close_now, graceful and not already_closed)
        else:
            self._close_now(graceful and not already_closed)

    def _close_now(self, graceful: bool) -> None:
        paho = self._paho
        if paho is not None and graceful and paho.is_connected():
            paho.on_disconnect = None  # we know; do not report it as lost
            paho.disconnect()
            paho.loop_write()  # flush DISCONNECT (after anything queued before it) now
        self._teardown()

    def _teardown(self) -> None:
        self._closed = True
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        paho = self._paho
        if paho is not None:
            paho.abort()
            paho._prepared = None
            self._ticker_discard()
        elif self._sock is not None:
            self._sock.close()
        self._sock = None
        if self._connack is not None and not self._connack.done():
            self._connack.cancel()

    def _ticker_discard(self) -> None:
        if self._paho is not None:
            ticker(self._loop).discard(self._paho)

    def _fail_acks(self, exc: Exception) -> None:
        acks, self._acks = self._acks, {}
        for future in acks.values():
            if not future.done():
                future.set_exception(exc)


def _connack_code(reason: Any) -> int:
    return {134: 4, 135: 5}.get(int(reason.value), int(reason.value))
