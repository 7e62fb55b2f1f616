"""``DeviceClient``: an asyncio IoT Hub device over MQTT 3.1.1 (reference §2, sdk-wire-facts).

::

    async with DeviceClient(connection_string, host="127.0.0.1", port=1883) as device:
        device.on_method("reboot", lambda request: (200, "Reboot started"))
        device.on_desired(lambda update: print(update.version, update.properties))
        twin = await device.get_twin()
        version = await device.patch_reported({"firmware": {"version": "1.0.0"}})
        await device.send_telemetry({"temperature": 21.5})

Connection: client id = device id, ``clean_session=0``, username
``{HostName}/{deviceId}/?api-version=2021-04-12``, a SAS token as password. ``HostName``
from the connection string names the hub in the token and username (and is the TLS
server name); ``host``/``port`` only say where to connect.

Lifecycle of one connection: CONNECT -> SUBSCRIBE (twin responses, desired patches,
methods) -> GET the full twin -> the desired handler sees the full desired document when
its ``$version`` differs from the last one seen -> ready. Desired patches that arrive
meanwhile are held back and then delivered only if their ``$version`` is newer than
the fetched twin's (reference §1.3): a change made while the device was offline
arrives through the GET, and no change arrives twice.

Failures: every pending request fails with :class:`ConnectionLostError` when the
connection drops; a dropped connection is re-established with exponential backoff and
jitter. A refused CONNACK (4 or 5) raises :class:`UnauthorizedError` and stops
reconnecting: retrying bad credentials only hammers the hub. Twin error statuses raise
the matching :class:`HubError` subclass (``error_for_status``). Request timeouts raise
the builtin ``TimeoutError``.

SAS renewal: the hub drops a device when its token expires, so the client reconnects
with a fresh token ``token_renewal_margin`` seconds (at most a quarter of the token's
lifetime) before ``se``, after letting in-flight requests finish. Requests made while
it renews wait for the new connection.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import random
import ssl
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar, Union

from iot_flows import __version__
from iot_flows._exceptions import (
    ConnectionLostError,
    HubError,
    IoTFlowsError,
    ProtocolError,
    TransportError,
    UnauthorizedError,
    error_for_status,
)
from iot_flows._sas import ConnectionString, parse_sas_token
from iot_flows.device._ledger import RequestLedger
from iot_flows.device._transport import MqttConnection

__all__ = [
    "API_VERSION",
    "Backoff",
    "DesiredUpdate",
    "DeviceClient",
    "DeviceTwin",
    "MethodRequest",
    "MethodResponse",
]

log = logging.getLogger(__name__)

API_VERSION = "2021-04-12"
DEFAULT_KEEPALIVE = 60
DEFAULT_TOKEN_TTL = 3600
DEFAULT_TOKEN_RENEWAL_MARGIN = 120.0
DEFAULT_REQUEST_TIMEOUT = 30.0
DEFAULT_CONNECT_TIMEOUT = 30.0
SUBSCRIPTIONS = ["$iothub/twin/res/#", "$iothub/twin/PATCH/properties/desired/#", "$iothub/methods/POST/#"]
_DUMPS = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnect delays: ``initial * multiplier**attempt`` capped at ``maximum``, times a
    random factor in ``[1 - jitter, 1 + jitter]`` so a fleet does not reconnect in step."""

    initial: float = 0.5
    maximum: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        base = min(self.maximum, self.initial * self.multiplier ** min(attempt, 32))
        u = (rng or random).random()
        return max(0.0, base * (1.0 + self.jitter * (2.0 * u - 1.0)))


@dataclass(frozen=True, slots=True)
class DeviceTwin:
    """What a device sees of its twin: ``desired`` and ``reported``, each with ``$version``."""

    desired: dict[str, Any]
    reported: dict[str, Any]

    @property
    def desired_version(self) -> int:
        return int(self.desired.get("$version", 0))

    @property
    def reported_version(self) -> int:
        return int(self.reported.get("$version", 0))


@dataclass(frozen=True, slots=True)
class DesiredUpdate:
    """A desired-property change handed to the desired handler.

    ``complete`` is True for the full desired document (after a (re)connect, with
    ``reported`` holding the reported document fetched with it) and False for a patch
    (keys set to ``None`` were removed). ``properties`` never contains ``$version``.
    """

    properties: dict[str, Any]
    version: int
    complete: bool
    reported: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class MethodRequest:
    """A direct-method call: ``payload`` is the service's JSON payload, parsed."""

    name: str
    payload: Any
    rid: str


@dataclass(frozen=True, slots=True)
class MethodResponse:
    """A direct-method reply: the device's own status code and a JSON payload."""

    status: int
    payload: Any = None


MethodResult = Union[MethodResponse, tuple[int, Any], int, None]
MethodHandler = Callable[[MethodRequest], Union[MethodResult, Awaitable[MethodResult]]]
DesiredHandler = Callable[[DesiredUpdate], Union[None, Awaitable[None]]]
ConnectionListener = Callable[[bool], None]


def _twin_error(status: int, payload: bytes) -> HubError:
    message, code = f"twin operation returned status {status}", None
    try:
        body = json.loads(payload) if payload.strip() else None
    except (ValueError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict):
        message = str(body.get("message") or body.get("Message") or message)
        raw_code = body.get("errorCode")
        code = raw_code if isinstance(raw_code, int) else None
    return error_for_status(status, message, code)


def _parse_query(text: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(text, keep_blank_values=True))


class DeviceClient:
    """One device identity connected to an IoT Hub (or the bundled hub) over MQTT.

    Args:
        connection_string: ``HostName=...;DeviceId=...;SharedAccessKey=...``.
        host, port: where to connect (default: ``HostName``, 8883 with TLS, else 1883).
        ca_file, ssl_context: TLS trust; ``tls`` defaults to True when either is given
            or when no ``host`` override is given (Azure only speaks TLS).
        server_hostname: TLS server name (default ``HostName``).
        bind_address: local source address (many devices from one machine).
        keepalive: MQTT keep-alive seconds.
        token_ttl, token_renewal_margin: SAS token lifetime and renewal lead, seconds.
        request_timeout, connect_timeout: default timeouts in seconds.
        auto_reconnect: re-establish a dropped connection in the background.
        backoff: reconnect delays.
    """

    __slots__ = (
        "_cs", "device_id", "_host", "_port", "_ssl_context", "_server_hostname", "_bind_address",
        "_keepalive", "_token_ttl", "_renewal_margin", "request_timeout", "connect_timeout",
        "_auto_reconnect", "_backoff", "_rng", "_username", "_conn", "_ledger", "_ready", "_online",
        "_closing", "_establishing", "_fatal", "_waiters", "_desired_version", "_desired_buffer",
        "_desired_handler", "_desired_chain", "_method_handlers", "_default_method_handler",
        "_listener", "_renew_handle", "_renew_task", "_reconnect_task", "_attempt", "_tasks",
        "_token_expiry", "reconnects", "token_renewals", "__weakref__",
    )  # fmt: skip

    def __init__(
        self,
        connection_string: str | ConnectionString,
        *,
        host: str | None = None,
        port: int | None = None,
        tls: bool | None = None,
        ca_file: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        bind_address: str | None = None,
        keepalive: int = DEFAULT_KEEPALIVE,
        token_ttl: int = DEFAULT_TOKEN_TTL,
        token_renewal_margin: float = DEFAULT_TOKEN_RENEWAL_MARGIN,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        auto_reconnect: bool = True,
        backoff: Backoff = Backoff(),
        rng: random.Random | None = None,
    ) -> None:
        cs = connection_string if isinstance(connection_string, ConnectionString) else ConnectionString.parse(
            connection_string
        )
        if not cs.device_id:
            raise ValueError("a device connection string needs DeviceId")
        if cs.module_id:
            raise ValueError("module identities are not supported")
        if token_ttl < 1:
            raise ValueError("token_ttl must be at least 1 second")
        self._cs = cs
        self.device_id: str = cs.device_id
        use_tls = tls if tls is not None else bool(ca_file or ssl_context or host is None)
        if use_tls and ssl_context is None:
            ssl_context = ssl.create_default_context(cafile=ca_file)
            ssl_context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._ssl_context = ssl_context if use_tls else None
        self._host = host or cs.host_name
        self._port = port or (8883 if use_tls else 1883)
        self._server_hostname = server_hostname or cs.host_name
        self._bind_address = bind_address
        self._keepalive = keepalive
        self._token_ttl = token_ttl
        self._renewal_margin = token_renewal_margin
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self._auto_reconnect = auto_reconnect
        self._backoff = backoff
        self._rng = rng
        client_type = urllib.parse.quote(f"iot-flows/{__version__}", safe="")
        self._username = f"{cs.host_name}/{cs.device_id}/?api-version={API_VERSION}&DeviceClientType={client_type}"
        self._conn: MqttConnection | None = None
        self._ledger = RequestLedger()
        self._ready = False  # connected, subscribed and reconciled: requests may go out
        self._online = False  # what listeners were last told
        self._closing = False
        self._establishing = False
        self._fatal: IoTFlowsError | None = None
        self._waiters: list[asyncio.Future[None]] | None = None
        self._desired_version = 0
        self._desired_buffer: list[dict[str, Any]] | None = None
        self._desired_handler: DesiredHandler | None = None
        self._desired_chain: asyncio.Task[None] | None = None
        self._method_handlers: dict[str, MethodHandler] | None = None
        self._default_method_handler: MethodHandler | None = None
        self._listener: ConnectionListener | None = None
        self._renew_handle: asyncio.TimerHandle | None = None
        self._renew_task: asyncio.Task[None] | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        self._attempt = 0
        self._tasks: set[asyncio.Task[Any]] | None = None
        self._token_expiry = 0
        self.reconnects = 0
        self.token_renewals = 0

    def __repr__(self) -> str:
        state = "connected" if self._ready else "disconnected"
        return f"<DeviceClient {self.device_id!r} {state} {self._host}:{self._port}>"

    # ---- configuration ------------------------------------------------------------
    def on_desired(self, handler: DesiredHandler | None) -> DesiredHandler | None:
        """Set the desired-property handler (sync or async); usable as a decorator."""
        self._desired_handler = handler
        return handler

    def on_method(self, name: str | None, handler: MethodHandler | None) -> MethodHandler | None:
        """Set the handler for method ``name`` (``None``: the default for any other name).

        A handler gets a :class:`MethodRequest` and returns a :class:`MethodResponse`,
        a ``(status, payload)`` tuple, a bare status, or ``None`` (200 with no payload),
        directly or from a coroutine. The reply is queued before any task the handler
        started gets to run. A method without a handler is answered 501; a handler that
        raises is answered 500.
        """
        if name is None:
            self._default_method_handler = handler
            return handler
        if handler is None:
            if self._method_handlers:
                self._method_handlers.pop(name, None)
            return None
        if self._method_handlers is None:
            self._method_handlers = {}
        self._method_handlers[name] = handler
        return handler

    def on_connection_change(self, listener: ConnectionListener | None) -> None:
        """Call ``listener(True/False)`` when the device comes online or goes offline.

        Token renewals are not reported (the device stays logically online).
        """
        self._listener = listener

    # ---- state --------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """True while the device is online (including a token renewal in progress)."""
        return self._online

    @property
    def desired_version(self) -> int:
        """The desired ``$version`` the device has last seen (0 before the first connect)."""
        return self._desired_version

    @property
    def pending_requests(self) -> int:
        return len(self._ledger)

    @property
    def token_expiry(self) -> int:
        """``se`` of the token of the current connection (epoch seconds)."""
        return self._token_expiry

    def _connecting(self) -> bool:
        return self._establishing or self._reconnect_task is not None or self._renew_task is not None

    # ---- connect / disconnect -----------------------------------------------------
    async def __aenter__(self) -> "DeviceClient":
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()

    async def connect(self, *, retry: bool = False) -> None:
        """Connect, subscribe and reconcile the twin.

        With ``retry``, transient failures are retried with backoff until connected.
        Raises :class:`UnauthorizedError` when the hub refuses the credentials, and
        (without ``retry``) :class:`ConnectError` when the hub cannot be reached.
        """
        if self._ready:
            return
        if self._reconnect_task is not None or self._renew_task is not None:
            await self.wait_connected()
            return
        self._closing = False
        self._fatal = None
        self._establishing = True  # requests made meanwhile wait for the outcome
        try:
            while True:
                try:
                    await self._establish()
                    self._attempt = 0
                    return
                except UnauthorizedError as exc:
                    self._fatal = exc
                    self._wake_waiters(exc)
                    raise
                except (TransportError, HubError, TimeoutError) as exc:
                    if not retry or self._closing:
                        self._wake_waiters(exc)
                        raise
                    delay = self._backoff.delay(self._attempt, self._rng)
                    self._attempt += 1
                    log.debug("%s: connect failed (%s); retrying in %.2f s", self.device_id, exc, delay)
                    await asyncio.sleep(delay)
                    if self._closing:
                        raise ConnectionLostError(f"{self.device_id!r}: disconnect() while connecting") from exc
        finally:
            self._establishing = False

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until requests can go out; raise the fatal error if reconnecting gave up."""
        conn = await self._ready_connection(timeout if timeout is not None else self.connect_timeout)
        del conn

    async def disconnect(self, *, graceful: bool = True) -> None:
        """Close the connection and stop reconnecting; pending requests fail.

        ``graceful=False`` closes the socket without DISCONNECT, as a crash would.
        Tasks running method or desired handlers are cancelled (except the caller).
        """
        self._closing = True
        self._cancel_renewal()
        current = asyncio.current_task()
        for task in (self._renew_task, self._reconnect_task):
            if task is not None and task is not current:
                task.cancel()
        self._renew_task = self._reconnect_task = None
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close(graceful=graceful)
        self._ledger.fail_all(lambda: ConnectionLostError(f"{self.device_id!r} disconnected"))
        self._set_ready(False)
        self._wake_waiters(ConnectionLostError(f"{self.device_id!r} disconnected"))
        tasks, self._tasks = self._tasks, None
        for task in tasks or ():
            if task is not current:
                task.cancel()
        if self._desired_chain is not None and self._desired_chain is not current:
            self._desired_chain.cancel()
        self._desired_chain = None

    async def _establish(self) -> None:
        """One connection attempt: CONNECT, SUBSCRIBE, GET twin, reconcile, ready."""
        token = self._cs.token(ttl=self._token_ttl)
        expiry = parse_sas_token(token).expiry
        conn = MqttConnection(self.device_id, on_message=self._on_message, on_lost=_ignore)
        conn.on_lost = partial(self._on_lost, conn)
        outer_establishing, self._establishing = self._establishing, True
        self._desired_buffer = []
        self._conn = conn
        try:
            await conn.open(
                self._host,
                self._port,
                username=self._username,
                password=token,
                keepalive=self._keepalive,
                clean_session=False,
                ssl_context=self._ssl_context,
                server_hostname=self._server_hostname,
                bind_address=self._bind_address,
                timeout=self.connect_timeout,
            )
            # With clean_session=0 the hub keeps subscriptions across connections, but
            # subscribing again costs one round trip and survives a hub that forgot.
            codes = await conn.subscribe(SUBSCRIPTIONS, self.request_timeout)
            if any(code >= 0x80 for code in codes):
                raise ProtocolError(f"the hub refused subscriptions {SUBSCRIPTIONS} -> {codes}")
            twin = await self._get_twin_on(conn, self.request_timeout)
        except BaseException:
            self._desired_buffer = None
            if self._conn is conn:
                self._conn = None
            conn.close(graceful=False)
            raise
        finally:
            self._establishing = outer_establishing
        if self._closing:
            conn.close()
            raise ConnectionLostError(f"{self.device_id!r}: disconnect() while connecting")
        self._token_expiry = expiry
        self._schedule_renewal(expiry)
        self._reconcile(twin)
        self._set_ready(True)

    def _on_lost(self, conn: MqttConnection, exc: Exception) -> None:
        if conn is not self._conn:
            return
        self._conn = None
        self._ledger.fail_all(lambda: ConnectionLostError(str(exc)))
        if self._establishing or self._renew_task is not None:
            return  # the task establishing a connection sees its requests fail
        was_ready = self._ready
        self._cancel_renewal()
        self._set_ready(False)
        if self._closing:
            return
        if self._auto_reconnect and was_ready:
            self._start_reconnect()
        else:
            self._wake_waiters(ConnectionLostError(str(exc)))

    def _start_reconnect(self) -> None:
        if self._reconnect_task is None and not self._closing:
            self._reconnect_task = asyncio.get_running_loop().create_task(
                self._reconnect_loop(), name=f"reconnect-{self.device_id}"
            )

    async def _reconnect_loop(self) -> None:
        try:
            while not self._closing:
                delay = self._backoff.delay(self._attempt, self._rng)
                self._attempt += 1
                await asyncio.sleep(delay)
                if self._closing:
                    return
                try:
                    await self._establish()
                except UnauthorizedError as exc:
                    log.warning("%s: reconnect refused, giving up: %s", self.device_id, exc)
                    self._fatal = exc
                    self._set_ready(False)
                    self._wake_waiters(exc)
                    return
                except (TransportError, HubError, TimeoutError) as exc:
                    log.debug("%s: reconnect attempt %d failed: %s", self.device_id, self._attempt, exc)
                    continue
                self._attempt = 0
                self.reconnects += 1
                return
        finally:
            if self._reconnect_task is asyncio.current_task():
                self._reconnect_task = None

    # ---- token renewal ------------------------------------------------------------
    def _schedule_renewal(self, expiry: int) -> None:
        self._cancel_renewal()
        lifetime = expiry - time.time()
        margin = min(self._renewal_margin, max(lifetime / 4.0, 0.1))
        loop = asyncio.get_running_loop()
        self._renew_handle = loop.call_later(max(lifetime - margin, 0.05), self._renewal_due)

    def _cancel_renewal(self) -> None:
        if self._renew_handle is not None:
            self._renew_handle.cancel()
            self._renew_handle = None

    def _renewal_due(self) -> None:
        self._renew_handle = None
        if self._ready and not self._closing and self._renew_task is None:
            self._renew_task = asyncio.get_running_loop().create_task(
                self._renew(), name=f"renew-{self.device_id}"
            )

    async def _renew(self) -> None:
        """Reconnect with a fresh token before the hub drops us for an expired one."""
        try:
            self._ready = False  # new requests wait; listeners are not told
            loop = asyncio.get_running_loop()
            drain_until = loop.time() + max(0.0, min(self.request_timeout, self._token_expiry - time.time() - 0.25))
            while len(self._ledger) and loop.time() < drain_until and self._conn is not None:
                await asyncio.sleep(0.01)
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()
            self._ledger.fail_all(lambda: ConnectionLostError(f"{self.device_id!r}: token renewal"))
            try:
                await self._establish()
                self.token_renewals += 1
            except UnauthorizedError as exc:
                log.warning("%s: token renewal refused: %s", self.device_id, exc)
                self._fatal = exc
                self._set_ready(False)
                self._wake_waiters(exc)
            except (TransportError, HubError, TimeoutError) as exc:
                log.debug("%s: renewal failed (%s); reconnecting", self.device_id, exc)
                self._renew_task = None
                self._set_ready(False)  # offline until the reconnect succeeds
                if self._auto_reconnect and not self._closing:
                    self._start_reconnect()
                else:
                    self._wake_waiters(ConnectionLostError(str(exc)))
        finally:
            if self._renew_task is asyncio.current_task():
                self._renew_task = None

    # ---- ready gate -----------------------------------------------------------------
    def _set_ready(self, ready: bool) -> None:
        self._ready = ready
        if ready:
            self._wake_waiters(None)
        if ready != self._online:
            self._online = ready
            if self._listener is not None:
                try:
                    self._listener(ready)
                except Exception:
                    log.exception("connection listener failed")

    def _wake_waiters(self, exc: BaseException | None) -> None:
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if waiter.done():
                continue
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)

    async def _ready_connection(self, timeout: float) -> MqttConnection:
        async with asyncio.timeout(timeout):
            while True:
                if self._ready and self._conn is not None:
                    return self._conn
                if self._fatal is not None:
                    raise self._fatal
                if self._closing or not self._connecting():
                    raise ConnectionLostError(f"{self.device_id!r} is not connected")
                waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                if self._waiters is None:
                    self._waiters = []
                self._waiters.append(waiter)
                await waiter

    # ---- twin -----------------------------------------------------------------------
    async def get_twin(self, *, timeout: float | None = None) -> DeviceTwin:
        """GET the twin (``desired`` and ``reported``, no tags)."""
        timeout = timeout if timeout is not None else self.request_timeout
        async with asyncio.timeout(timeout):
            conn = await self._ready_connection(timeout)
            return await self._get_twin_on(conn, timeout)

    async def _get_twin_on(self, conn: MqttConnection, timeout: float) -> DeviceTwin:
        status, _, payload = await self._twin_request(conn, "$iothub/twin/GET/", b" ", timeout)
        body = json.loads(payload)
        return DeviceTwin(desired=body.get("desired") or {}, reported=body.get("reported") or {})

    async def patch_reported(self, patch: dict[str, Any], *, timeout: float | None = None) -> int:
        """Merge ``patch`` into the reported properties (``None`` deletes a key).

        Returns the new reported ``$version``.
        """
        if not isinstance(patch, dict):
            raise TypeError("a reported patch must be a dict")
        body = _DUMPS(patch).encode()
        timeout = timeout if timeout is not None else self.request_timeout
        async with asyncio.timeout(timeout):
            conn = await self._ready_connection(timeout)
            _, version, _ = await self._twin_request(conn, "$iothub/twin/PATCH/properties/reported/", body, timeout)
        if version is None:
            raise ProtocolError("the hub answered a reported patch without $version")
        return version

    async def _twin_request(
        self, conn: MqttConnection, prefix: str, body: bytes, timeout: float
    ) -> tuple[int, int | None, bytes]:
        # QoS 0 on purpose: the $rid response is the acknowledgement; QoS 1 would only
        # add a PUBACK per request and paho's in-flight bookkeeping.
        with self._ledger.pending() as (rid, future):
            conn.publish(f"{prefix}?$rid={rid}", body, qos=0)
            try:
                async with asyncio.timeout(timeout):
                    status, version, payload = await future
            except TimeoutError:
                raise TimeoutError(f"{self.device_id!r}: no twin response within {timeout:g} s") from None
        if status >= 300:
            raise _twin_error(status, payload)
        return status, version, payload

    # ---- telemetry ------------------------------------------------------------------
    async def send_telemetry(
        self,
        body: Any,
        *,
        properties: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> None:
        """Send a device-to-cloud message at QoS 1 and wait for the hub's PUBACK.

        ``body`` is sent as is when ``bytes``/``str``, otherwise as JSON (with
        ``$.ct=application/json`` and ``$.ce=utf-8`` in the property bag).
        """
        bag = dict(properties or {})
        if isinstance(body, bytes):
            data = body
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = _DUMPS(body).encode()
            bag.setdefault("$.ct", "application/json")
            bag.setdefault("$.ce", "utf-8")
        topic = f"devices/{self.device_id}/messages/events/{urllib.parse.urlencode(bag, quote_via=urllib.parse.quote)}"
        timeout = timeout if timeout is not None else self.request_timeout
        try:
            async with asyncio.timeout(timeout):
                conn = await self._ready_connection(timeout)
                await conn.publish_acked(topic, data, timeout)
        except TimeoutError:
            raise TimeoutError(f"{self.device_id!r}: no PUBACK within {timeout:g} s") from None

    # ---- inbound ----------------------------------------------------------------------
    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic.startswith("$iothub/twin/res/"):
            status_text, _, query = topic[len("$iothub/twin/res/") :].partition("/?")
            params = _parse_query(query)
            rid = params.get("$rid")
            try:
                status = int(status_text)
                version = int(params["$version"]) if "$version" in params else None
            except ValueError:
                log.warning("%s: malformed twin response topic %r", self.device_id, topic)
                return
            if rid is not None:
                self._ledger.resolve(rid, (status, version, payload))
        elif topic.startswith("$iothub/methods/POST/"):
            name, _, query = topic[len("$iothub/methods/POST/") :].partition("/?")
            rid = _parse_query(query).get("$rid")
            if rid is not None:
                self._dispatch_method(urllib.parse.unquote(name), rid, payload)
        elif topic.startswith("$iothub/twin/PATCH/properties/desired/"):
            self._on_desired_patch(payload)
        else:
            log.debug("%s: ignoring message on %r", self.device_id, topic)

    def _on_desired_patch(self, payload: bytes) -> None:
        try:
            doc = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            log.warning("%s: malformed desired patch %r", self.device_id, payload[:100])
            return
        if not isinstance(doc, dict):
            return
        if self._desired_buffer is not None:  # reconnecting: wait for the full twin
            self._desired_buffer.append(doc)
            return
        self._deliver_patch(doc)

    def _deliver_patch(self, doc: dict[str, Any]) -> None:
        version = doc.pop("$version", None)
        if isinstance(version, int):
            if version <= self._desired_version:
                return  # already part of the twin we fetched (reference §1.3)
            self._desired_version = version
        self._call_desired(DesiredUpdate(doc, self._desired_version, complete=False))

    def _reconcile(self, twin: DeviceTwin) -> None:
        buffered, self._desired_buffer = self._desired_buffer or [], None
        desired = dict(twin.desired)
        version = desired.pop("$version", 0)
        # "!=" rather than ">": a lower version means the twin was re-created.
        if not isinstance(version, int) or version != self._desired_version:
            self._desired_version = version if isinstance(version, int) else 0
            self._call_desired(DesiredUpdate(desired, self._desired_version, complete=True, reported=twin.reported))
        for doc in buffered:
            self._deliver_patch(doc)

    def _call_desired(self, update: DesiredUpdate) -> None:
        handler = self._desired_handler
        if handler is None:
            return
        try:
            result = handler(update)
        except Exception:
            log.exception("%s: desired handler failed", self.device_id)
            return
        if inspect.isawaitable(result):
            previous = self._desired_chain

            async def run_in_order() -> None:
                if previous is not None and not previous.done():
                    try:
                        await previous
                    except BaseException:
                        pass
                try:
                    await result
                except Exception:
                    log.exception("%s: desired handler failed", self.device_id)

            self._desired_chain = self._spawn(run_in_order())

    # ---- methods ----------------------------------------------------------------------
    def _dispatch_method(self, name: str, rid: str, payload: bytes) -> None:
        try:
            value = json.loads(payload) if payload.strip() else None
        except (ValueError, UnicodeDecodeError):
            value = payload.decode("utf-8", "replace")
        handler = (self._method_handlers or {}).get(name) or self._default_method_handler
        if handler is None:
            self._reply(rid, 501, {"message": f"method {name!r} is not implemented by this device"})
            return
        try:
            result = handler(MethodRequest(name, value, rid))
        except Exception as exc:
            log.exception("%s: method handler %r failed", self.device_id, name)
            self._reply(rid, 500, {"message": f"{type(exc).__name__}: {exc}"})
            return
        if inspect.isawaitable(result):
            self._spawn(self._finish_method(name, rid, result))
        else:
            self._reply_result(name, rid, result)

    async def _finish_method(self, name: str, rid: str, pending: Awaitable[MethodResult]) -> None:
        try:
            result = await pending
        except Exception as exc:
            log.exception("%s: method handler %r failed", self.device_id, name)
            self._reply(rid, 500, {"message": f"{type(exc).__name__}: {exc}"})
            return
        self._reply_result(name, rid, result)

    def _reply_result(self, name: str, rid: str, result: MethodResult) -> None:
        try:
            status, payload = _coerce(result)
        except (TypeError, ValueError) as exc:
            log.error("%s: method handler %r: %s", self.device_id, name, exc)
            self._reply(rid, 500, {"message": str(exc)})
            return
        self._reply(rid, status, payload)

    def _reply(self, rid: str, status: int, payload: Any) -> None:
        conn = self._conn
        if conn is None:
            log.debug("%s: not connected; method reply %s dropped", self.device_id, rid)
            return
        try:
            conn.publish(f"$iothub/methods/res/{int(status)}/?$rid={rid}", _DUMPS(payload).encode(), qos=1)
        except (TransportError, ValueError, TypeError) as exc:
            log.warning("%s: cannot send method reply %s: %s", self.device_id, rid, exc)

    def _spawn(self, coro: Awaitable[T]) -> asyncio.Task[T]:
        task: asyncio.Task[T] = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        if self._tasks is None:
            self._tasks = set()
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if self._tasks is not None:
            self._tasks.discard(task)
            if not self._tasks:
                self._tasks = None


def _coerce(result: MethodResult) -> tuple[int, Any]:
    if result is None:
        return 200, None
    if isinstance(result, MethodResponse):
        return result.status, result.payload
    if isinstance(result, int) and not isinstance(result, bool):
        return result, None
    if isinstance(result, tuple) and len(result) == 2:
        return int(result[0]), result[1]
    raise TypeError(f"a method handler returned {result!r}; expected MethodResponse, (status, payload) or int")


def _ignore(exc: Exception) -> None:
    del exc
