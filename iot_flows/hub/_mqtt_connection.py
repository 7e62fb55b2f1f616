"""One device's MQTT connection: the asyncio protocol, the device link, and packet handling.

The transport side (:meth:`_Connection.data_received` feeds the sans-IO codec, packets
are handled one at a time, in order, by one task per busy connection) and the IoT Hub
dialect of each packet (docs/iothub-reference.md §2, §9): CONNECT authentication and
CONNACK codes, SUBSCRIBE to IoT Hub topics only, PUBLISH routing and ``--quota``
throttling. :class:`iot_flows.hub._mqtt_server.MqttServer` listens and owns the
connections.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from iot_flows._exceptions import ThrottledError, UnauthorizedError
from iot_flows.hub._auth import check_device_token, parse_username
from iot_flows.hub._quota import Operation, Quota, device_publish_operation
from iot_flows.hub._sessions import Subscription
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
    encode_puback,
    encode_publish,
)
from iot_flows.store import storage_unavailable

if TYPE_CHECKING:
    from iot_flows.hub._mqtt_server import MqttServer

__all__: list[str] = []

#: The server's logger, as before the connection moved into its own module.
log = logging.getLogger("iot_flows.hub._mqtt_server")

_PINGRESP = encode(Pingresp())
#: CONNACK 0 (accepted) without and with a resumed session, encoded once.
_CONNACK_ACCEPTED = {present: encode(Connack(session_present=present, return_code=CONNACK_ACCEPTED))
                     for present in (False, True)}



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
        #: While a device publish is handled: what it sends, written with its PUBACK.
        self._corked: list[bytes] | None = None

    # ---- asyncio.Protocol -------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # No TCP_NODELAY here: asyncio and uvloop set it on every TCP transport they create
        # (tests/hub/test_connection_memory.py checks), and asking uvloop for the socket
        # built and kept a PseudoSocket per connection, plus a system call per connect.
        self.transport = transport  # type: ignore[assignment]  # uvloop's are not asyncio.Transport subclasses
        if self not in self.server._connections:  # not admitted by MqttServer._accept (e.g. WebSocket)
            self.server._connections.add(self)
            self.server._watch(self)

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
        if self._worker is None and self.authenticated and packets[0].__class__ is Publish:
            packets = self._method_responses_inline(packets)
            if not packets:
                return
        self._inbox.extend(packets)
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._drain())

    def _method_responses_inline(self, packets: list[Any]) -> list[Any]:
        """Resolve leading direct-method replies here, without a task (a job's hot path).

        Only when nothing is queued before them (order is kept) and no --quota applies
        (throttling may wait); everything else goes through :meth:`_drain`.
        """
        if self.server.quota() is not None:
            return packets
        endpoint = self.server.endpoint
        done = 0
        for packet in packets:
            if packet.__class__ is not Publish or packet.qos == 2 or not packet.topic.startswith("$iothub/methods/res/"):
                break
            if not endpoint.handle_method_response(self, packet.topic, packet.payload):
                break  # malformed: the normal path refuses it
            if packet.qos == 1:
                self._write(Puback(packet_id=packet.packet_id or 0))
            done += 1
        return packets[done:] if done else packets

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
        if qos:
            packet_id = self.server._next_packet_id()
            data = encode(Publish(topic=topic, payload=payload, qos=qos, retain=False, dup=False, packet_id=packet_id))
        else:
            data = encode_publish(topic, payload)
        if self._held is not None:
            self._held.append(data)  # attached but CONNACK not written yet
            return
        if self._corked is not None:
            # written with the PUBACK of the publish being handled, or at the next loop
            # iteration at the latest (a method request never waits for a slow twin write)
            if not self._corked:
                asyncio.get_running_loop().call_soon(self._write_corked, self._corked)
            self._corked.append(data)
            return
        self.transport.write(data)

    def _write_corked(self, corked: list[bytes]) -> None:
        """Write what :meth:`send` held while a publish was handled, if still unwritten."""
        if corked and self.transport is not None and not self.closed:
            self.transport.write(b"".join(corked))
        corked.clear()

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        else:  # accepted but never made (a TLS handshake that did not complete): no connection_lost follows
            self.server._connections.discard(self)

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
        device, stored_filters = await server.store.get_for_connect(packet.client_id)
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
        resumed = await server.sessions.attach(self, clean_session=packet.clean_session, stored_filters=stored_filters)
        if self.closed:  # the socket went away while attaching
            server.sessions.detach(self)
            return
        held, self._held = self._held or [], None
        self.transport.write(b"".join((_CONNACK_ACCEPTED[resumed], *held)) if held else _CONNACK_ACCEPTED[resumed])  # type: ignore[union-attr]
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
        granted = []
        for topic_filter, qos in packet.topics:
            sub = Subscription.parse(topic_filter, self.device_id)
            if sub is None:
                codes.append(SUBACK_FAILURE)
                continue
            granted.append(sub)
            codes.append(min(qos, 1))  # a QoS 2 subscription is granted QoS 1
        if granted:  # one stored-session write per SUBSCRIBE, not per filter
            await self.server.sessions.subscribe_many(self.device_id, granted)
        self._write(Suback(packet_id=packet.packet_id, return_codes=tuple(codes)))

    async def _on_publish(self, packet: Publish) -> None:
        if packet.qos == 2:
            self.close("QoS 2 is not supported")  # IoT Hub closes the connection
            return
        quota = self.server.quota()
        if quota is not None and await self._throttled(quota, packet):
            return
        # What the handler sends (a twin response) and the PUBACK leave in one socket write.
        corked: list[bytes] = []
        self._corked = corked
        try:
            allowed = await self.server.endpoint.handle_publish(self, packet.topic, packet.payload)
        finally:
            self._corked = None
        if allowed and packet.qos == 1:
            corked.append(encode_puback(packet.packet_id or 0))
        self._write_corked(corked)
        if not allowed:
            log.info("closing %s: publish to forbidden topic %r", self.device_id, packet.topic)
            self.close("forbidden topic")

