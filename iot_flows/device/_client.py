"""``DeviceClient``: an asyncio IoT Hub device over MQTT 3.1.1 (docs/iothub-reference.md §2, §9).

Azure docs followed: "Communicate with an IoT hub using the MQTT protocol"
(``iot-mqtt-connect-to-iot-hub.md``; docs/iothub-reference.md §2 is the project's digest of it) and
"Understand and use device twins" (``iot-hub-devguide-device-twins.md``, docs/iothub-reference.md §1).

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

Lifecycle: states and transitions are one table (``_lifecycle.py``); connecting,
reconnecting and SAS renewal are in ``_connection.py``, inbound messages in
``_inbound.py``. A change made while the device was offline arrives through the twin
GET after reconnecting, and no desired change arrives twice (docs/iothub-reference.md §1.3).

Failures: every pending request fails with :class:`ConnectionLostError` when the
connection drops; a dropped connection is re-established with exponential backoff and
jitter. A refused CONNACK (4 or 5) raises :class:`UnauthorizedError` and stops
reconnecting: retrying bad credentials only hammers the hub. Twin error statuses raise
the matching :class:`HubError` subclass (``error_for_status``). Request timeouts raise
:class:`RequestTimeoutError` (a :class:`TransportError` that is also a ``TimeoutError``).

SAS renewal: the client reconnects with a fresh token ``token_renewal_margin`` seconds
(at most a quarter of the token's lifetime) before ``se``; requests made meanwhile wait.
"""
from __future__ import annotations

import asyncio
import random
import ssl
import urllib.parse
from typing import Any

from iot_flows import __version__
from iot_flows._exceptions import (
    ConnectionLostError,
    IoTFlowsError,
    ProtocolError,
)
from iot_flows._sas import ConnectionString
from iot_flows.device._connection import ConnectionMixin
from iot_flows.device._ledger import RequestLedger
from iot_flows.device._lifecycle import ESTABLISHING, Event, Lifecycle, State
from iot_flows.device._messages import (
    Backoff,
    ConnectionListener,
    DesiredHandler,
    DesiredUpdate,
    DeviceTwin,
    MethodHandler,
    MethodRequest,
    MethodResponse,
    deadline,
    dumps,
)
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

API_VERSION = "2021-04-12"
DEFAULT_KEEPALIVE = 60
DEFAULT_TOKEN_TTL = 3600
DEFAULT_TOKEN_RENEWAL_MARGIN = 120.0
DEFAULT_REQUEST_TIMEOUT = 30.0
DEFAULT_CONNECT_TIMEOUT = 30.0


class DeviceClient(ConnectionMixin):
    """One device identity connected to an IoT Hub (or the bundled hub) over MQTT.

    Args:
        connection_string: ``HostName=...;DeviceId=...;SharedAccessKey=...``.
        host, port: where to connect (default: ``HostName``, 8883 with TLS, else 1883).
        tls, ca_file, ssl_context: TLS trust; ``tls`` defaults to True when ``ca_file``
            or ``ssl_context`` is given or when no ``host`` override is given (Azure
            only speaks TLS, at least 1.2).
        server_hostname: TLS server name (default ``HostName``).
        bind_address: local source address (many devices from one machine).
        keepalive: MQTT keep-alive, seconds.
        token_ttl, token_renewal_margin: SAS token lifetime and renewal lead, seconds.
        request_timeout, connect_timeout: default timeouts, seconds.
        auto_reconnect: re-establish a dropped connection in the background.
        backoff: reconnect delays; ``rng`` makes their jitter reproducible.

    Raises ``ValueError`` for a connection string without ``DeviceId``, with
    ``ModuleId`` (module identities are not supported) or a ``token_ttl`` below 1.
    """

    __slots__ = (
        "_cs", "_host", "_port", "_ssl_context", "_server_hostname", "_bind_address", "_keepalive",
        "_token_ttl", "_renewal_margin", "request_timeout", "connect_timeout", "_auto_reconnect", "_backoff",
        "_rng", "_username", "__weakref__",
    )  # fmt: skip  (the rest: ConnectionMixin, InboundMixin)

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
        self._retry = False
        self._backoff = backoff
        self._rng = rng
        client_type = urllib.parse.quote(f"iot-flows/{__version__}", safe="")
        self._username = f"{cs.host_name}/{cs.device_id}/?api-version={API_VERSION}&DeviceClientType={client_type}"
        self._conn: MqttConnection | None = None
        self._ledger = RequestLedger()
        self._lifecycle = Lifecycle()
        self._online = False  # what listeners were last told
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
        self._connector: asyncio.Task[None] | None = None
        self._attempt = 0
        self._tasks: set[asyncio.Task[Any]] | None = None
        self._token_expiry = 0
        self.reconnects = 0
        self.token_renewals = 0
        self.last_error: str | None = None

    def __repr__(self) -> str:
        return f"<DeviceClient {self.device_id!r} {self._lifecycle.state.value} {self._host}:{self._port}>"

    # ---- configuration ------------------------------------------------------------
    def on_desired(self, handler: DesiredHandler | None) -> DesiredHandler | None:
        """Set the desired-property handler (sync or async; ``None`` removes it).

        It gets a :class:`DesiredUpdate`: the full desired document after every
        (re)connect whose ``$version`` differs from the last one seen, then each newer
        patch (docs/iothub-reference.md §1.3). Async handlers run one after another, in order. A
        handler that raises is logged. Returns ``handler`` (usable as a decorator).
        """
        self._desired_handler = handler
        return handler

    def on_method(self, name: str | None, handler: MethodHandler | None) -> MethodHandler | None:
        """Set the handler for direct method ``name`` (``None``: the default for any other name).

        A handler gets a :class:`MethodRequest` and returns a :class:`MethodResponse`,
        a ``(status, payload)`` tuple, a bare status, or ``None`` (200 with no payload),
        directly or from a coroutine. The reply is queued before any task the handler
        started gets to run. A method without a handler is answered 501; a handler that
        raises is answered 500 (docs/iothub-reference.md §2, direct methods). ``handler=None`` removes
        the handler. Returns ``handler``.
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
    def state(self) -> State:
        """Where the connection is in its lifecycle (see ``_lifecycle.TRANSITIONS``)."""
        return self._lifecycle.state

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
        """Twin requests sent and not yet answered."""
        return len(self._ledger)

    @property
    def token_expiry(self) -> int:
        """``se`` of the token of the current connection (epoch seconds)."""
        return self._token_expiry

    # ---- connect / disconnect -----------------------------------------------------
    async def __aenter__(self) -> DeviceClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()

    async def connect(self, *, retry: bool = False) -> None:
        """Connect, subscribe and reconcile the twin; return once requests can go out.

        With ``retry``, transient failures are retried with backoff until connected.
        Raises :class:`UnauthorizedError` when the hub refuses the credentials (CONNACK
        4 or 5, never retried), :class:`ConnectionLostError` when :meth:`disconnect`
        interrupts it, and (without ``retry``) :class:`ConnectError` when the hub cannot
        be reached or :class:`RequestTimeoutError` when it does not answer in time.
        While a reconnect or renewal is under way it waits for that instead.
        """
        state = self._lifecycle.state
        if state is State.READY:
            return
        if state in ESTABLISHING:
            await self.wait_connected()
            return
        self._fatal = None
        self._retry = retry
        self._enter(Event.CONNECT)
        try:
            await self._establish_loop()
        except asyncio.CancelledError:
            if self._lifecycle.state is State.CONNECTING:
                self._enter(Event.CLOSE, ConnectionLostError(f"{self.device_id!r}: connect() was cancelled"))
            raise

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until requests can go out (``timeout`` seconds, default ``connect_timeout``).

        Raises the refusal (:class:`UnauthorizedError`) if reconnecting gave up,
        :class:`ConnectionLostError` when disconnected, :class:`RequestTimeoutError`
        when the time is up.
        """
        timeout = timeout if timeout is not None else self.connect_timeout
        async with deadline(timeout, self.device_id, "not connected"):
            await self._ready_connection()

    async def disconnect(self, *, graceful: bool = True) -> None:
        """Close the connection and stop reconnecting; pending requests fail with
        :class:`ConnectionLostError`. Calling it again does nothing more.

        ``graceful=False`` closes the socket without DISCONNECT, as a crash would.
        Tasks running method or desired handlers are cancelled (except the caller).
        """
        lost = ConnectionLostError(f"{self.device_id!r} disconnected")
        if self._lifecycle.can(Event.CLOSE):
            self._enter(Event.CLOSE, lost)
        self._cancel_renewal()
        current = asyncio.current_task()
        connector, self._connector = self._connector, None
        if connector is not None and connector is not current:
            connector.cancel()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close(graceful=graceful)
        self._ledger.fail_all(lambda: ConnectionLostError(f"{self.device_id!r} disconnected"))
        self._wake_waiters(lost)
        tasks, self._tasks = self._tasks, None
        for task in tasks or ():
            if task is not current:
                task.cancel()
        if self._desired_chain is not None and self._desired_chain is not current:
            self._desired_chain.cancel()
        self._desired_chain = None

    # ---- twin -----------------------------------------------------------------------
    async def get_twin(self, *, timeout: float | None = None) -> DeviceTwin:
        """GET the twin (``desired`` and ``reported``, no tags), docs/iothub-reference.md §2 ``$iothub/twin/GET``.

        Waits up to ``timeout`` seconds (default ``request_timeout``) for a connection
        and the answer. Raises :class:`RequestTimeoutError`, :class:`ConnectionLostError`,
        or the :class:`HubError` for the status the hub answered.
        """
        timeout = timeout if timeout is not None else self.request_timeout
        async with deadline(timeout, self.device_id, "no twin"):
            conn = await self._ready_connection()
            return await self._get_twin_on(conn, timeout)

    async def patch_reported(self, patch: dict[str, Any], *, timeout: float | None = None) -> int:
        """Merge ``patch`` into the reported properties (``None`` deletes a key), docs/iothub-reference.md §2
        ``$iothub/twin/PATCH/properties/reported``. Returns the new reported ``$version``.

        Raises ``TypeError`` for a non-dict, :class:`RequestTimeoutError` after ``timeout``
        seconds (default ``request_timeout``), :class:`ConnectionLostError`, or the
        :class:`HubError` the hub answered (e.g. :class:`BadRequestError` for a patch
        that breaks the twin limits).
        """
        if not isinstance(patch, dict):
            raise TypeError("a reported patch must be a dict")
        body = dumps(patch).encode()
        timeout = timeout if timeout is not None else self.request_timeout
        async with deadline(timeout, self.device_id, "reported patch not acknowledged"):
            conn = await self._ready_connection()
            _, version, _ = await self._twin_request(conn, "$iothub/twin/PATCH/properties/reported/", body, timeout)
        if version is None:
            raise ProtocolError("the hub answered a reported patch without $version")
        return version

    # ---- telemetry ------------------------------------------------------------------
    async def send_telemetry(
        self,
        body: Any,
        *,
        properties: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> None:
        """Send a device-to-cloud message at QoS 1 and wait for the hub's PUBACK
        (docs/iothub-reference.md §2, ``devices/{id}/messages/events/{property bag}``).

        ``body`` is sent as is when ``bytes``/``str``, otherwise as JSON (with
        ``$.ct=application/json`` and ``$.ce=utf-8`` in the property bag). Raises
        :class:`RequestTimeoutError` after ``timeout`` seconds (default
        ``request_timeout``) and :class:`ConnectionLostError` when the connection drops.
        """
        bag = dict(properties or {})
        if isinstance(body, bytes):
            data = body
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = dumps(body).encode()
            bag.setdefault("$.ct", "application/json")
            bag.setdefault("$.ce", "utf-8")
        topic = f"devices/{self.device_id}/messages/events/{urllib.parse.urlencode(bag, quote_via=urllib.parse.quote)}"
        timeout = timeout if timeout is not None else self.request_timeout
        async with deadline(timeout, self.device_id, "no PUBACK"):
            conn = await self._ready_connection()
            await conn.publish_acked(topic, data, timeout)
