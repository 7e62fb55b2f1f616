"""Sockets for device connections, made by asyncio, and the shared keep-alive ticker.

paho's own ``connect()`` blocks (aiomqtt runs it in a thread pool). Here the TCP
connection and the TLS handshake are made by asyncio (``sock_connect`` and a
non-blocking handshake) and handed to paho through ``_create_socket``; optionally the
socket binds a source address first (beyond ~14k sockets from one address to one port,
the kernel's port search slows down). One :class:`Ticker` per event loop calls
``loop_misc()`` (keep-alive pings) for every open connection, instead of one timer per
device.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import weakref
from typing import Any

import paho.mqtt.client as mqtt

__all__ = ["TICK_SECONDS", "Paho", "Ticker", "open_socket", "ticker"]

log = logging.getLogger("iot_flows.device._transport")

#: Longest interval between ``loop_misc()`` calls (keep-alive bookkeeping); shorter
#: (a quarter of the keep-alive) when a connection uses a short keep-alive.
TICK_SECONDS = 5.0
#: Linux's IP_BIND_ADDRESS_NO_PORT: bind the address now, pick the port at connect()
#: time by the full 4-tuple, so many sockets can share one source address.
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


class Paho(mqtt.Client):
    """paho's client, connected over a socket we made (see the module docstring)."""

    _prepared: Any = None

    def _create_socket(self) -> Any:  # overrides paho's blocking socket creation
        sock, self._prepared = self._prepared, None
        if sock is None:
            raise ConnectionError("no prepared socket")
        return sock

    def abort(self) -> None:
        """Close the socket without sending DISCONNECT (a crash or a network loss)."""
        self._sock_close()


class Ticker:
    """Calls ``loop_misc()`` on every open connection of one event loop, once a tick."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._members: dict[int, Paho] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._interval = TICK_SECONDS

    def add(self, client: Paho, keepalive: int) -> None:
        """Tick ``client`` from now on (at least every ``keepalive / 4`` seconds)."""
        self._members[id(client)] = client
        if keepalive > 0:
            self._interval = min(self._interval, max(0.25, keepalive / 4.0))
        if self._handle is None:
            self._handle = self._loop.call_later(self._interval, self._tick)

    def discard(self, client: Paho) -> None:
        """Stop ticking ``client``; the timer stops with the last one."""
        self._members.pop(id(client), None)
        if not self._members:
            self._interval = TICK_SECONDS
            if self._handle is not None:
                self._handle.cancel()
                self._handle = None

    def _tick(self) -> None:
        self._handle = None
        for client in list(self._members.values()):
            try:
                client.loop_misc()
            except Exception:  # one broken client must not stop the others' pings
                log.exception("loop_misc failed")
        if self._members:
            self._handle = self._loop.call_later(self._interval, self._tick)


_TICKERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Ticker] = weakref.WeakKeyDictionary()


def ticker(loop: asyncio.AbstractEventLoop) -> Ticker:
    """The ticker of ``loop`` (made on first use)."""
    ticker = _TICKERS.get(loop)
    if ticker is None:
        ticker = _TICKERS[loop] = Ticker(loop)
    return ticker


async def _wait_fd(loop: asyncio.AbstractEventLoop, sock: socket.socket, *, write: bool) -> None:
    future: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not future.done():
            future.set_result(None)

    fd = sock.fileno()
    (loop.add_writer if write else loop.add_reader)(fd, ready)
    try:
        await future
    finally:
        (loop.remove_writer if write else loop.remove_reader)(fd)


async def open_socket(
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None,
    server_hostname: str | None,
    bind_address: str | None,
) -> socket.socket:
    """A connected, non-blocking socket to ``host:port`` (TLS-wrapped and handshaken
    when ``ssl_context`` is given), bound to ``bind_address`` first if given.

    Raises ``OSError`` (including ``ssl.SSLError``) when it cannot connect.
    """
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"cannot resolve {host!r}")
    family, _, proto, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM, proto)
    try:
        sock.setblocking(False)
        if bind_address:
            if family == socket.AF_INET:
                try:
                    sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
                except OSError:
                    pass
            sock.bind((bind_address, 0))
        await loop.sock_connect(sock, address)
        if ssl_context is None:
            return sock
        tls = ssl_context.wrap_socket(
            sock, server_hostname=server_hostname or host, do_handshake_on_connect=False
        )
    except BaseException:
        sock.close()
        raise
    try:
        while True:
            try:
                tls.do_handshake()
                return tls
            except ssl.SSLWantReadError:
                await _wait_fd(loop, tls, write=False)
            except ssl.SSLWantWriteError:
                await _wait_fd(loop, tls, write=True)
    except BaseException:
        tls.close()
        raise
