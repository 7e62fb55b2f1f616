"""The hub's MQTT 3.1.1 device endpoint (plain TCP and TLS), one asyncio protocol per socket.

IoT Hub's dialect (docs/iothub-reference.md §2, §9): client id = device id, SAS token as
password, CONNACK 5 (not authorized) for any credential problem, one connection per
identity, persistent subscriptions with ``clean_session=0``, no QoS 2 (a QoS 2 PUBLISH
closes the connection), only IoT Hub topics may be subscribed (others get 0x80),
keep-alive enforced at 1.5x and capped at 1,767 s (so keep-alive 0 or 3600 cannot hold
a silent connection forever). A malformed packet closes that one connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from iot_flows._exceptions import ThrottledError, UnauthorizedError
from iot_flows.hub._auth import check_device_token, parse_username
from iot_flows.hub._device_endpoint import DeviceEndpoint
from iot_flows.hub._quota import Operation, Quota, device_publish_operation
from iot_flows.hub._sessions import SessionRegistry, Subscription
from iot_flows.hub._topics import parse_device_topic, twin_response_topic
from iot_flows.mqtt import (
    CONNACK_ACCEPTED,
    CONNACK_IDENTIFIER_REJECTED,
    CONNACK_NOT_AUTHORIZED,
    CONNACK_SERVER_UNAVAILABLE,
    CONNACK_UNACCEPTABLE_PROTOCOL,
    SUBACK_FAILURE,
    Connack,
    Connect,
    Disconnect,
    MqttCodecError,
    PacketReader,
    Pingreq,
    Pingresp,
    Puback,
    Publish,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
    encode,
)
from iot_flows.store import HubStore, storage_unavailable

__all__ = ["MqttServer"]

log = logging.getLogger(__name__)

#: Seconds a socket may stay open without sending CONNECT.
CONNECT_TIMEOUT = 10.0
#: Azure's server-side keep-alive cap in seconds (IoT Hub MQTT doc, "Default keep-alive
#: timeout"; docs/iothub-reference.md §2.1): the hub times out at 1.5x the client's keep-alive, at most this.
MAX_KEEP_ALIVE = 1767.0


def idle_limit(keep_alive: float, cap: float = MAX_KEEP_ALIVE) -> float:
    """Seconds of silence after which the hub closes a connected device's socket.

    ``keep_alive`` is the CONNECT packet's value in seconds. MQTT 3.1.1 §3.1.2.10 says the
    server waits 1.5x keep-alive; Azure caps this server-side timeout at ``cap`` (1,767 s),
    which also applies to keep-alive 0 (MQTT's "no keep-alive"), so no silent client holds
    a connection forever.
    """
    if keep_alive <= 0:
        return cap
    return min(keep_alive * 1.5, cap)

_PINGRESP = encode(Pingresp())


class _Connection(asyncio.Protocol):
    """One device socket; becomes a :class:`DeviceLink` once authenticated."""

    def __init__(self, server: MqttServer) -> None:
        self.server = server
        self.device_id = ""
        self.transport: asyncio.Transport | None = None
        self.reader = PacketReader()
        self.authenticated = False
        self.closed = False
        self.keep_alive = 0.0
        self.last_seen = server.clock()
        self._expiry_handle: asyncio.TimerHandle | None = None
        # Packets are handled one at a time, in order, by one task per busy connection
        # (handling awaits the store); sends before CONNACK are held until it is written.
        self._inbox: deque[Any] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._held: list[bytes] | None = []

    # ---- asyncio.Protocol -------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:  # Nagle + delayed ACK cost ~40-90 ms per request/response otherwise
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.server._connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.last_seen = self.server.clock()
        try:
            packets = self.reader.feed(data)
        except MqttCodecError as exc:
            log.info("closing %s: malformed packet (%s)", self.device_id or "unauthenticated client", exc)
            self.close("malformed packet")
            return
        if not packets:
            return
        self._inbox.extend(packets)
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._inbox:
                packet = self._inbox.popleft()
                if self.closed:
                    self._inbox.clear()
                    return
                try:
                    await self._handle(packet)
                except Exception as exc:  # never let one device's input take the hub down
                    if storage_unavailable(exc) is None:
                        log.exception("error handling packet from %s", self.device_id)
                        self.close("internal error")
                    elif isinstance(packet, Connect):  # locked database, full disk: retry later
                        self._refuse(CONNACK_SERVER_UNAVAILABLE, f"storage unavailable ({exc})")
                    else:
                        log.warning("closing %s: storage unavailable (%s)", self.device_id, exc)
                        self.close("storage unavailable")
        finally:
            self._worker = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server._connections.discard(self)
        if self._expiry_handle is not None:
            self._expiry_handle.cancel()
        if self.authenticated:
            self.server.sessions.detach(self)

    # ---- DeviceLink ---------------------------------------------------------------
    def send(self, topic: str, payload: bytes, qos: int = 0) -> None:
        if self.closed or self.transport is None:
            return
        packet_id = self.server._next_packet_id() if qos else None
        data = encode(Publish(topic=topic, payload=payload, qos=qos, retain=False, dup=False, packet_id=packet_id))
        if self._held is not None:
            self._held.append(data)  # attached but CONNACK not written yet
            return
        self.transport.write(data)

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # ---- packet handling ----------------------------------------------------------
    def _write(self, packet: Any) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(encode(packet))

    async def _handle(self, packet: Any) -> None:
        if not self.authenticated:
            if isinstance(packet, Connect):
                await self._on_connect(packet)
            else:
                self.close("first packet was not CONNECT")
            return
        if isinstance(packet, Publish):
            await self._on_publish(packet)
        elif isinstance(packet, Pingreq):
            self.transport.write(_PINGRESP)  # type: ignore[union-attr]
        elif isinstance(packet, Subscribe):
            await self._on_subscribe(packet)
        elif isinstance(packet, Unsubscribe):
            for topic_filter in packet.filters:
                sub = Subscription.parse(topic_filter, self.device_id)
                if sub is not None:
                    await self.server.sessions.unsubscribe(self.device_id, sub)
            self._write(Unsuback(packet_id=packet.packet_id))
        elif isinstance(packet, Disconnect):
            self.close("client disconnect")
        elif isinstance(packet, Connect):
            self.close("second CONNECT")  # MQTT-3.1.0-2
        # PUBACKs for the hub's QoS 1 publishes need no action; PUBREC etc. cannot occur
        # because the hub never sends QoS 2.

    def _refuse(self, code: int, why: str) -> None:
        log.info("refusing device %r: %s", self.device_id, why)
        self._write(Connack(session_present=False, return_code=code))
        self.close(why)

    async def _on_connect(self, packet: Connect) -> None:
        server = self.server
        self.device_id = packet.client_id
        if packet.protocol_level != 4:
            self._refuse(CONNACK_UNACCEPTABLE_PROTOCOL, "only MQTT 3.1.1 is supported")
            return
        if not packet.client_id or "/" in packet.client_id:
            self._refuse(CONNACK_IDENTIFIER_REJECTED, "module identities are not supported")
            return
        try:
            params = parse_username(packet.username or "", server.hostname, packet.client_id)
        except UnauthorizedError as exc:
            self._refuse(CONNACK_NOT_AUTHORIZED, exc.message)
            return
        device = await server.store.get(packet.client_id)
        if self.closed:
            return
        if device is None or device.status != "enabled":
            self._refuse(CONNACK_NOT_AUTHORIZED, "unknown or disabled device")
            return
        try:
            password = (packet.password or b"").decode("utf-8", "replace")
            token = check_device_token(password, device, server.hostname, server.policy_keys)
        except UnauthorizedError as exc:
            self._refuse(CONNACK_NOT_AUTHORIZED, exc.message)
            return
        if not await self._admit_connect():
            return
        model_id = params.get("model-id")
        if model_id and model_id != device.model_id:  # Plug and Play: the twin's modelId
            await server.store.set_model_id(device.device_id, model_id)
        self.authenticated = True
        self.keep_alive = float(packet.keep_alive)
        resumed = await server.sessions.attach(self, clean_session=packet.clean_session)
        if self.closed:  # the socket went away while attaching
            server.sessions.detach(self)
            return
        self._write(Connack(session_present=resumed, return_code=CONNACK_ACCEPTED))
        held, self._held = self._held or [], None
        for data in held:
            self.transport.write(data)  # type: ignore[union-attr]
        # IoT Hub disconnects a device when its token expires (401003).
        delay = token.expiry - time.time()
        loop = asyncio.get_running_loop()
        self._expiry_handle = loop.call_later(max(delay, 0), self.close, "token expired")

    async def _admit_connect(self) -> bool:
        # --quota: new device connections are shaped (CONNACK delayed) and, beyond the
        # queue, refused with CONNACK 3 "server unavailable" so that the device retries.
        quota = self.server.quota()
        if quota is None:
            return True
        try:
            await quota.acquire(Operation.CONNECT)
        except ThrottledError as exc:
            self._refuse(CONNACK_SERVER_UNAVAILABLE, exc.message)
            return False
        return not self.closed

    async def _throttled(self, quota: Quota, packet: Publish) -> bool:
        """--quota on a device publish: True when refused (and answered here).

        Twin requests get status 429 on ``$iothub/twin/res/429/`` (docs/iothub-reference.md §6.3);
        throttled telemetry closes the connection, as IoT Hub does over MQTT.
        """
        op = device_publish_operation(packet.topic)
        if op is None:
            return False
        try:
            await quota.acquire(op)
            return False
        except ThrottledError as exc:
            if op is Operation.D2C:
                self.close("device-to-cloud throttled")
                return True
            parsed = parse_device_topic(packet.topic, self.device_id)
            if parsed is None or parsed.rid is None:
                return False  # not a valid request: the endpoint refuses it
            if self.server.sessions.subscribed_link(self.device_id, Subscription.TWIN_RESPONSES) is self:
                body = json.dumps({"errorCode": exc.error_code, "message": exc.message}).encode()
                self.send(twin_response_topic(429, parsed.rid), body)
            if packet.qos == 1:
                self._write(Puback(packet_id=packet.packet_id or 0))
            return True

    async def _on_subscribe(self, packet: Subscribe) -> None:
        codes = []
        for topic_filter, qos in packet.topics:
            sub = Subscription.parse(topic_filter, self.device_id)
            if sub is None:
                codes.append(SUBACK_FAILURE)
                continue
            await self.server.sessions.subscribe(self.device_id, sub)
            codes.append(min(qos, 1))  # a QoS 2 subscription is granted QoS 1
        self._write(Suback(packet_id=packet.packet_id, return_codes=tuple(codes)))

    async def _on_publish(self, packet: Publish) -> None:
        if packet.qos == 2:
            self.close("QoS 2 is not supported")  # IoT Hub closes the connection
            return
        quota = self.server.quota()
        if quota is not None and await self._throttled(quota, packet):
            return
        if not await self.server.endpoint.handle_publish(self, packet.topic, packet.payload):
            log.info("closing %s: publish to forbidden topic %r", self.device_id, packet.topic)
            self.close("forbidden topic")
            return
        if packet.qos == 1:
            self._write(Puback(packet_id=packet.packet_id or 0))


#: Per-connection TLS read buffer. asyncio allocates 256 KiB per TLS connection by default
#: (``SSLProtocol.max_size``): 2.8 GB at 10,000 devices. MQTT packets from devices are small
#: and larger ones are simply read in several chunks.
TLS_READ_BUFFER = 16 * 1024


def _shrink_tls_buffers() -> None:
    import asyncio.sslproto

    if getattr(asyncio.sslproto.SSLProtocol, "max_size", 0) > TLS_READ_BUFFER:
        asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER


class MqttServer:
    """Listens for devices; owns the keep-alive sweeper."""

    def __init__(
        self,
        *,
        store: HubStore,
        sessions: SessionRegistry,
        endpoint: DeviceEndpoint,
        hostname: str,
        policy_keys: dict[str, str] | None = None,
        quota: Callable[[], Quota | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_keep_alive: float = MAX_KEEP_ALIVE,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.store = store
        #: The hub's current ``--quota`` throttles (None: off).
        self.quota: Callable[[], Quota | None] = quota or (lambda: None)
        #: Monotonic seconds; tests inject a fake clock to pass 30 minutes instantly.
        self.clock = clock
        self.max_keep_alive = max_keep_alive
        self.connect_timeout = connect_timeout
        #: Shared access policy keys: devices may sign with a DeviceConnect policy (D-SAS).
        self.policy_keys = policy_keys if policy_keys is not None else {}
        self.sessions = sessions
        self.endpoint = endpoint
        self.hostname = hostname
        self._connections: set[_Connection] = set()
        self._servers: list[asyncio.Server] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._packet_ids = 0

    def _next_packet_id(self) -> int:
        self._packet_ids = self._packet_ids % 65535 + 1
        return self._packet_ids

    def protocol_factory(self) -> asyncio.Protocol:
        """A new device connection handler (for transports other than a listening socket)."""
        return _Connection(self)

    @property
    def connection_count(self) -> int:
        """Open MQTT connections (authenticated or not)."""
        return len(self._connections)

    async def listen(self, host: str, port: int, ssl_context: Any = None) -> int:
        """Start a listener; return the bound port (useful with port 0)."""
        loop = asyncio.get_running_loop()
        if ssl_context is not None:
            _shrink_tls_buffers()
        server = await loop.create_server(
            lambda: _Connection(self), host, port, ssl=ssl_context, backlog=4096, reuse_address=True
        )
        self._servers.append(server)
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep(), name="mqtt-keepalive-sweeper")
        return int(server.sockets[0].getsockname()[1])

    async def _sweep(self) -> None:
        """Close connections silent for 1.5x their keep-alive (capped), or stuck before CONNECT."""
        while True:
            await asyncio.sleep(0.5)
            now = self.clock()
            for conn in list(self._connections):
                if not conn.authenticated:
                    limit = self.connect_timeout
                else:
                    limit = idle_limit(conn.keep_alive, self.max_keep_alive)
                if now - conn.last_seen > limit:
                    log.info("closing %s: keep-alive expired", conn.device_id or "unauthenticated client")
                    conn.close("keep-alive expired")

    def disconnect(self, device_id: str) -> None:
        """Close the device's connection, if any (device disabled or deleted)."""
        self.sessions.forget(device_id)

    async def close(self) -> None:
        """Stop listening and close every connection."""
        for server in self._servers:
            server.close()
        for conn in list(self._connections):
            conn.close("hub shutting down")
        for server in self._servers:
            await server.wait_closed()
        if self._sweeper is not None:
            self._sweeper.cancel()
            try:
                await self._sweeper
            except asyncio.CancelledError:
                pass
        self._servers.clear()

