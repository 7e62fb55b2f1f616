"""The hub's MQTT 3.1.1 device endpoint (plain TCP and TLS), one asyncio protocol per socket.

IoT Hub's dialect (docs/iothub-reference.md §2, §9): client id = device id, SAS token as
password, CONNACK 5 (not authorized) for any credential problem, one connection per
identity, persistent subscriptions with ``clean_session=0``, no QoS 2 (a QoS 2 PUBLISH
closes the connection), only IoT Hub topics may be subscribed (others get 0x80),
keep-alive enforced at 1.5x and capped at 1,767 s (so keep-alive 0 or 3600 cannot hold
a silent connection forever). A malformed packet closes that one connection.

One connection's transport and packet handling live in :mod:`iot_flows.hub._mqtt_connection`;
this module listens, counts connections and sweeps keep-alives.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
import weakref
from collections.abc import Callable
from typing import Any

from iot_flows._limits import BASE_DESCRIPTORS, open_files_limit
from iot_flows.hub._device_endpoint import DeviceEndpoint
from iot_flows.hub._mqtt_connection import _Connection
from iot_flows.hub._quota import Quota
from iot_flows.hub._sessions import SessionRegistry
from iot_flows.store import HubStore

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


#: Per-connection TLS read buffer. asyncio allocates 256 KiB per TLS connection by default
#: (``SSLProtocol.max_size``): 2.8 GB at 10,000 devices. MQTT packets from devices are small
#: and larger ones are simply read in several chunks. ``python -m bench.tls_memory``: a bare
#: asyncio TLS server holds 40.7 KB per idle connection with 16 KiB, 28.6 KB with 4 KiB;
#: the rest (~23 KB) is OpenSSL's per-connection state (CPython already sets
#: SSL_MODE_RELEASE_BUFFERS; Mosquitto, C on the same OpenSSL, holds ~25 KB per TLS client).
TLS_READ_BUFFER = 4 * 1024


def _shrink_tls_buffers() -> None:
    import asyncio.sslproto

    if getattr(asyncio.sslproto.SSLProtocol, "max_size", 0) > TLS_READ_BUFFER:
        asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER


#: Allocations of at least this many bytes get their own ``mmap`` (glibc's M_MMAP_THRESHOLD).
#: uvloop gives every TLS connection a 256 KiB read buffer (``SSL_READ_MAX_SIZE``, not
#: tunable), of which an idle MQTT connection touches one page. glibc starts with a
#: 128 KiB threshold but raises it when a larger block is freed (the hub's start-up frees a
#: 408 KiB one), and from then on those buffers are carved from the heap, often from memory
#: the TLS handshakes and the store's batched reads had touched and freed, so a good part of
#: each 256 KiB stays resident: 46-68 KB per TLS device instead of 27 (``./scripts/bench``).
#: Pinned, each buffer is a fresh mapping of which only the touched pages count.
MMAP_THRESHOLD = 256 * 1024
_M_MMAP_THRESHOLD = -3  # glibc's mallopt() parameter number


def pin_mmap_threshold(size: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``size`` bytes (no dynamic raise); True when set.

    Process-wide; a no-op (False) where the C library has no ``mallopt`` (not glibc).
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, size))


def default_max_connections() -> int | None:
    """The open-files limit less :data:`~iot_flows._limits.BASE_DESCRIPTORS` (REST clients,
    the store's connections, NATS, listeners); None where the platform has no such limit."""
    soft = open_files_limit()
    return None if soft is None else max(1, soft - BASE_DESCRIPTORS)


class _Refused(asyncio.Protocol):
    """A socket accepted beyond the connection limit: closed at once, which frees its
    descriptor; the device sees the connection reset and retries as after any outage."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()  # type: ignore[attr-defined]


#: Seconds between two "refusing connections" warnings.
_REFUSAL_LOG_INTERVAL = 10.0


class MqttServer:
    """Listens for devices; owns the keep-alive sweeper and the connection limit."""

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
        max_connections: int | None = None,
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
        #: Keep-alive deadlines: (monotonic seconds, tie-breaker, connection) (see :meth:`_sweep_due`).
        self._deadlines: list[tuple[float, int, weakref.ref[_Connection]]] = []
        self._watch_seq = 0
        self._limits: dict[tuple[float, float], float] = {}
        self._packet_ids = 0
        #: Most open MQTT connections; None: the open-files limit less a reserve, read at :meth:`listen`.
        self.max_connections = max_connections
        self._explicit_limit = max_connections is not None
        #: Sockets closed at once because the limit was reached (for tests and operators).
        self.refused = 0
        self._refusal_logged = -_REFUSAL_LOG_INTERVAL

    def _next_packet_id(self) -> int:
        self._packet_ids = self._packet_ids % 65535 + 1
        return self._packet_ids

    def protocol_factory(self) -> asyncio.Protocol:
        """A new device connection handler (for transports other than a listening socket)."""
        return _Connection(self)

    def _accept(self) -> asyncio.Protocol:
        """A handler for a socket the listener accepted, or :class:`_Refused` past the limit.

        Past the open-files limit a hub would stop accepting anything, REST requests
        included, and say nothing; refusing MQTT sockets beyond ``max_connections`` keeps
        descriptors for the REST API and the store, and a warning names the limit.
        """
        if self.max_connections is None or len(self._connections) < self.max_connections:
            # Counted from now, not from connection_made: the loop runs this factory for every
            # socket of an accept burst before any connection_made (and a TLS handshake may
            # never complete), so counting there let a burst past the limit.
            conn = _Connection(self)
            self._connections.add(conn)
            self._watch(conn)  # the CONNECT timeout also ends a TLS handshake that never completes
            return conn
        self.refused += 1
        now = time.monotonic()
        if now - self._refusal_logged >= _REFUSAL_LOG_INTERVAL:
            self._refusal_logged = now
            why = "--max-connections" if self._explicit_limit else f"the open-files limit less {BASE_DESCRIPTORS}"
            log.warning(
                "refusing MQTT connections: %d open, the most this hub accepts (%s; %d refused so far); "
                "raise `ulimit -n` or --max-connections, or add a hub node", len(self._connections), why, self.refused,
            )
        return _Refused()

    @property
    def connection_count(self) -> int:
        """Open MQTT connections (authenticated or not)."""
        return len(self._connections)

    async def listen(self, host: str, port: int, ssl_context: Any = None) -> int:
        """Start a listener; return the bound port (useful with port 0)."""
        loop = asyncio.get_running_loop()
        if ssl_context is not None:
            _shrink_tls_buffers()
            pin_mmap_threshold()
        if not self._explicit_limit:
            self.max_connections = default_max_connections()
        tls: dict[str, Any] = {"ssl": ssl_context, "ssl_handshake_timeout": self.connect_timeout} if ssl_context else {}
        server = await loop.create_server(self._accept, host, port, backlog=4096, reuse_address=True, **tls)
        self._servers.append(server)
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep(), name="mqtt-keepalive-sweeper")
        return int(server.sockets[0].getsockname()[1])

    def _limit(self, conn: _Connection) -> float:
        """Seconds of silence ``conn`` may keep: the CONNECT timeout, then 1.5x its keep-alive (capped)."""
        if not conn.authenticated:
            return self.connect_timeout
        key = (conn.keep_alive, self.max_keep_alive)
        limit = self._limits.get(key)
        if limit is None:  # fleets share a few keep-alive values
            limit = self._limits[key] = idle_limit(conn.keep_alive, self.max_keep_alive)
        return limit

    def _sweep_due(self, now: float) -> None:
        """Check the connections whose deadline passed; close the silent ones, re-arm the others.

        A deadline heap instead of a pass over every connection: each connection is looked at
        about once per idle limit (90 s at keep-alive 60), not every tick (at 10,000 devices
        the full pass every 0.5 s was ~6 % of the hub's CPU during a job). An entry's deadline
        is never later than the connection's own (``last_seen`` only grows), so nothing is
        closed late; a connection not yet past CONNECT is re-checked every tick, because its
        limit changes when it authenticates (keep-alive 1 closes after 1.5 s).
        """
        heap = self._deadlines
        rearm: list[tuple[float, int, weakref.ref[_Connection]]] = []
        while heap and heap[0][0] <= now:
            _, seq, ref = heapq.heappop(heap)
            conn = ref()
            if conn is None or conn.closed:
                continue
            deadline = conn.last_seen + self._limit(conn)
            if now > deadline:
                log.info("closing %s: keep-alive expired", conn.device_id or "unauthenticated client")
                conn.close("keep-alive expired")
                continue
            rearm.append((deadline if conn.authenticated else min(deadline, now), seq, ref))
        for entry in rearm:
            heapq.heappush(heap, entry)

    def _watch(self, conn: _Connection) -> None:
        """Put a new connection under the keep-alive sweep (checked at the next tick)."""
        self._watch_seq += 1
        heapq.heappush(self._deadlines, (conn.last_seen, self._watch_seq, weakref.ref(conn)))

    async def _sweep(self) -> None:
        """Close connections silent for 1.5x their keep-alive (capped), or stuck before CONNECT."""
        while True:
            await asyncio.sleep(0.5)
            self._sweep_due(self.clock())

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

