"""How a :class:`DeviceClient` gets, keeps and renews its connection (driven by ``_lifecycle``).

One connection attempt (:meth:`ConnectionMixin._establish`): CONNECT with a fresh SAS
token -> SUBSCRIBE (twin responses, desired patches, methods) -> GET the full twin ->
reconcile desired properties -> ``ESTABLISHED``. Desired patches that arrive meanwhile
are held back and delivered after the twin only if newer (docs/iothub-reference.md §1.3).

Every failure -- of a first connect, of a reconnect, of a token renewal, or a dropped
connection -- goes through :meth:`ConnectionMixin._fail`, the one error path: it turns
the exception into a lifecycle event (``REFUSED``, ``RETRY`` or ``GIVE_UP``) and the
table says what follows. ``connect()`` runs attempts in the caller's task; reconnecting
and renewing run in one background task, the *connector*.

SAS renewal (docs/iothub-reference.md §2.1, the SDKs' token refresh): the hub drops a device when its
token expires, so the client moves to ``RENEWING`` ``token_renewal_margin`` seconds (at
most a quarter of the token's lifetime) before ``se``, lets in-flight requests finish,
closes the connection and establishes a new one; requests made meanwhile wait.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from functools import partial

from iot_flows._exceptions import (
    ConnectionLostError,
    HubError,
    IoTFlowsError,
    ProtocolError,
    TransportError,
    UnauthorizedError,
)
from iot_flows._sas import ConnectionString, parse_sas_token
from iot_flows.device._inbound import InboundMixin
from iot_flows.device._lifecycle import ESTABLISHING, ONLINE, Event, Lifecycle, State
from iot_flows.device._messages import Backoff, ConnectionListener
from iot_flows.device._transport import MqttConnection

__all__ = ["SUBSCRIPTIONS", "ConnectionMixin"]

log = logging.getLogger("iot_flows.device._client")

SUBSCRIPTIONS = ["$iothub/twin/res/#", "$iothub/twin/PATCH/properties/desired/#", "$iothub/methods/POST/#"]
#: What a connection attempt may fail with (anything else is a bug and propagates).
RECOVERABLE = (TransportError, HubError, TimeoutError)


def _ignore(exc: Exception) -> None:
    del exc


class ConnectionMixin(InboundMixin):
    """The connection lifecycle of a ``DeviceClient`` (inbound messages: ``InboundMixin``)."""

    __slots__ = (
        "_lifecycle", "_online", "_fatal", "_waiters", "_listener", "_renew_handle", "_connector", "_attempt",
        "_retry", "_token_expiry", "reconnects", "token_renewals", "last_error",
    )  # fmt: skip

    request_timeout: float
    connect_timeout: float
    reconnects: int
    token_renewals: int
    last_error: str | None
    _cs: ConnectionString
    _host: str
    _port: int
    _ssl_context: ssl.SSLContext | None
    _server_hostname: str
    _bind_address: str | None
    _keepalive: int
    _token_ttl: int
    _renewal_margin: float
    _auto_reconnect: bool
    _retry: bool
    _backoff: Backoff
    _rng: random.Random | None
    _username: str
    _lifecycle: Lifecycle
    _online: bool
    _fatal: IoTFlowsError | None
    _waiters: list[asyncio.Future[None]] | None
    _listener: ConnectionListener | None
    _renew_handle: asyncio.TimerHandle | None
    _connector: asyncio.Task[None] | None
    _attempt: int
    _token_expiry: int

    # ---- state changes ----------------------------------------------------------------
    def _enter(self, event: Event, exc: BaseException | None = None) -> State:
        """Fire ``event`` and apply what the new state means for waiters, listeners, timers."""
        state = self._lifecycle.fire(event)
        if state is State.READY:
            self._wake_waiters(None)
        else:
            self._cancel_renewal()
            if state is State.FAILED:
                self._fatal = exc if isinstance(exc, IoTFlowsError) else None
                self._wake_waiters(exc)
            elif state is State.DISCONNECTED:
                self._wake_waiters(exc or ConnectionLostError(f"{self.device_id!r} is not connected"))
        online = state in ONLINE
        if online != self._online:
            self._online = online
            if self._listener is not None:
                try:
                    self._listener(online)
                except Exception:
                    log.exception("connection listener failed")
        return state

    def _fail(self, exc: BaseException) -> State:
        """The one error path for connect, reconnect and renewal failures and for drops.

        ``UnauthorizedError`` (CONNACK 4/5) -> ``REFUSED``: no retry. Anything else ->
        ``RETRY`` when allowed (``connect(retry=True)`` while connecting, otherwise
        ``auto_reconnect``), else ``GIVE_UP``. Starts the connector when the table says
        ``RECONNECTING``. Returns the new state.
        """
        state = self._lifecycle.state
        if state is State.DISCONNECTED:  # disconnect() came first: nothing left to decide
            return state
        self.last_error = str(exc) or type(exc).__name__
        if isinstance(exc, UnauthorizedError):
            log.warning("%s: the hub refused the credentials (%s): %s", self.device_id, state.value, exc)
            event = Event.REFUSED
        elif self._retry if state is State.CONNECTING else self._auto_reconnect:
            log.debug("%s: %s failed, retrying: %s", self.device_id, state.value, exc)
            event = Event.RETRY
        else:
            event = Event.GIVE_UP
        new = self._enter(event, exc)
        if new is State.RECONNECTING and self._connector is None:
            self._start_connector()
        return new

    # ---- attempts -----------------------------------------------------------------------
    async def _establish_loop(self) -> None:
        """Attempt connections until ``READY``; raise the error when the table says stop."""
        backoff = self._lifecycle.state is State.RECONNECTING
        while True:
            if backoff:
                delay = self._backoff.delay(self._attempt, self._rng)
                self._attempt += 1
                await asyncio.sleep(delay)
                if self._lifecycle.state is State.DISCONNECTED:
                    raise ConnectionLostError(f"{self.device_id!r}: disconnect() while connecting")
            try:
                await self._establish()
                return
            except RECOVERABLE as exc:
                if self._fail(exc) not in (State.CONNECTING, State.RECONNECTING):
                    raise
                backoff = True

    async def _establish(self) -> None:
        """One connection attempt: CONNECT, SUBSCRIBE, GET twin, reconcile, ``ESTABLISHED``."""
        token = self._cs.token(ttl=self._token_ttl)
        expiry = parse_sas_token(token).expiry
        conn = MqttConnection(self.device_id, on_message=self._on_message, on_lost=_ignore)
        conn.on_lost = partial(self._on_lost, conn)
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
        if self._lifecycle.state is State.DISCONNECTED:
            conn.close()
            raise ConnectionLostError(f"{self.device_id!r}: disconnect() while connecting")
        self._token_expiry = expiry
        before = self._lifecycle.state
        self._reconcile(twin)
        self._enter(Event.ESTABLISHED)
        self._schedule_renewal(expiry)
        self._attempt = 0
        self.last_error = None
        if before is State.RECONNECTING:
            self.reconnects += 1
        elif before is State.RENEWING:
            self.token_renewals += 1

    def _on_lost(self, conn: MqttConnection, exc: Exception) -> None:
        if conn is not self._conn:
            return
        self._conn = None
        self._ledger.fail_all(lambda: ConnectionLostError(str(exc)))
        if self._lifecycle.state in ESTABLISHING:
            return  # the task establishing a connection sees its requests fail
        self._fail(exc)

    # ---- the connector: reconnecting and renewing in the background ---------------------
    def _start_connector(self) -> None:
        self._connector = asyncio.get_running_loop().create_task(
            self._run_connector(), name=f"{self._lifecycle.state.value}-{self.device_id}"
        )

    async def _run_connector(self) -> None:
        try:
            if self._lifecycle.state is State.RENEWING:
                await self._drain_and_close()
            await self._establish_loop()
        except RECOVERABLE as exc:
            log.debug("%s: connector stopped: %s", self.device_id, exc)
        finally:
            if self._connector is asyncio.current_task():
                self._connector = None

    async def _drain_and_close(self) -> None:
        """Let in-flight requests finish (until shortly before ``se``), then close."""
        loop = asyncio.get_running_loop()
        drain_until = loop.time() + max(0.0, min(self.request_timeout, self._token_expiry - time.time() - 0.25))
        while len(self._ledger) and loop.time() < drain_until and self._conn is not None:
            await asyncio.sleep(0.01)
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        self._ledger.fail_all(lambda: ConnectionLostError(f"{self.device_id!r}: token renewal"))

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
        if self._lifecycle.state is State.READY and self._connector is None:
            self._enter(Event.RENEW)
            self._start_connector()

    # ---- requests wait for READY --------------------------------------------------------
    def _wake_waiters(self, exc: BaseException | None) -> None:
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if waiter.done():
                continue
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)

    async def _ready_connection(self) -> MqttConnection:
        """The connection once ``READY``; raises the refusal in ``FAILED`` and
        :class:`ConnectionLostError` in ``DISCONNECTED`` (callers bound the wait)."""
        while True:
            state, conn = self._lifecycle.state, self._conn
            if state is State.READY and conn is not None:
                return conn
            if state is State.FAILED and self._fatal is not None:
                raise self._fatal
            if state not in ESTABLISHING:
                raise ConnectionLostError(f"{self.device_id!r} is not connected")
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if self._waiters is None:
                self._waiters = []
            self._waiters.append(waiter)
            await waiter
