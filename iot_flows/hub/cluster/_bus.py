"""The NATS connection between hub nodes: JSON publish, request/reply and subscriptions.

Subjects (``{p}`` is the prefix, ``iotflows`` by default):

=================================  =========================================================
``{p}.node.<node>.method``          request/reply: invoke a direct method on a device there
``{p}.node.<node>.desired``         a desired-property notification for a device there
``{p}.takeover``                    a device connected to a node: others drop theirs
``{p}.revoked``                     a device was disabled, deleted or re-keyed: drop it
``{p}.changes``                     change-stream entries made on one node, for the others
=================================  =========================================================

The client reconnects by itself (forever, every 0.5 s); while it is disconnected,
requests fail fast with :class:`BusUnavailableError` and publishes are buffered by the
client (up to its pending-buffer size) or dropped with a log line.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from iot_flows._exceptions import IoTFlowsError
from iot_flows._json import dumps
from iot_flows._tasks import BackgroundTasks

__all__ = ["Bus", "BusUnavailableError", "ClusterError", "NodeIdInUseError"]

log = logging.getLogger(__name__)


class ClusterError(IoTFlowsError):
    """Raised when a hub node cannot join its cluster (the message is one line)."""


class BusUnavailableError(ClusterError):
    """Raised when the NATS server cannot be reached (at start, or for a cross-node call)."""


class NodeIdInUseError(ClusterError):
    """Raised when a running node already uses this node's ``--node-id``."""


class NoResponderError(IoTFlowsError):
    """Raised when no node listens on a request's subject (the node died or left)."""


class Bus:
    """One NATS connection of one node."""

    def __init__(
        self,
        url: str,
        node_id: str,
        prefix: str = "iotflows",
        on_reconnected: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        if not url.startswith(("nats://", "tls://", "ws://", "wss://")):
            raise BusUnavailableError(f"--bus must be a NATS URL like nats://host:4222, got {url!r}")
        self.url = url
        self.node_id = node_id
        self.prefix = prefix
        self._nc: Client | None = None
        self._tasks = BackgroundTasks(f"bus {node_id}")
        self._on_reconnected = on_reconnected
        self._closing = False

    def subject(self, *parts: str) -> str:
        """``<prefix>.<part>.<part>...``: a NATS subject in this cluster's namespace."""
        return ".".join((self.prefix, *parts))

    @property
    def connected(self) -> bool:
        """True while the NATS connection is up."""
        return self._nc is not None and self._nc.is_connected

    async def connect(self, timeout: float = 5.0) -> None:
        """Connect; raise :class:`BusUnavailableError` (one line) if NATS is unreachable."""

        async def on_error(exc: Exception) -> None:
            log.debug("NATS: %s", exc)

        async def on_disconnected() -> None:
            if self._closing:
                return
            log.warning("node %s lost NATS at %s; cross-node calls answer 503 until it is back", self.node_id, self.url)

        async def on_reconnected() -> None:
            log.warning("node %s reconnected to NATS at %s", self.node_id, self.url)
            if self._on_reconnected is not None:
                try:
                    await self._on_reconnected()
                except Exception:
                    log.exception("node %s: reconciling after the NATS outage failed", self.node_id)

        try:
            self._nc = await asyncio.wait_for(
                nats.connect(
                    servers=[self.url],
                    name=f"iot-flows-{self.node_id}",
                    connect_timeout=2,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    ping_interval=5,
                    max_outstanding_pings=2,
                    error_cb=on_error,
                    disconnected_cb=on_disconnected,
                    reconnected_cb=on_reconnected,
                ),
                timeout,
            )
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            raise BusUnavailableError(
                f"NATS at {self.url} is unreachable ({type(exc).__name__}); start nats-server or fix --bus"
            ) from None

    async def close(self) -> None:
        """Cancel and await in-flight handlers and publishes, then drain (2 s) and close NATS."""
        self._closing = True
        await self._tasks.close()
        if self._nc is not None:
            try:
                await asyncio.wait_for(self._nc.drain(), 2)
            except Exception:
                await self._nc.close()
            self._nc = None

    async def subscribe(self, subject: str, handler: Callable[[Msg], Awaitable[None]]) -> None:
        """Run ``handler`` for each message, each in its own task (slow ones never block others)."""
        assert self._nc is not None

        async def dispatch(msg: Msg) -> None:
            self._tasks.spawn(self._guard(handler, msg), name=f"bus-{msg.subject}")

        await self._nc.subscribe(subject, cb=dispatch)

    @staticmethod
    async def _guard(handler: Callable[[Msg], Awaitable[None]], msg: Msg) -> None:
        try:
            await handler(msg)
        except Exception:
            log.exception("bus handler for %s failed", msg.subject)

    def publish(self, subject: str, body: dict[str, Any]) -> None:
        """Fire-and-forget JSON publish (at most once)."""
        if self._nc is None:
            return
        data = dumps(body).encode()
        self._tasks.spawn(self._publish(subject, data), name=f"publish-{subject}")

    async def _publish(self, subject: str, data: bytes) -> None:
        assert self._nc is not None
        try:
            await self._nc.publish(subject, data)
        except Exception as exc:
            log.warning("NATS publish to %s dropped: %s", subject, exc)

    async def request(self, subject: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        """JSON request/reply; raise BusUnavailableError, NoResponderError or TimeoutError."""
        if not self.connected:
            raise BusUnavailableError(f"NATS at {self.url} is unreachable")
        assert self._nc is not None
        try:
            msg = await self._nc.request(subject, dumps(body).encode(), timeout=timeout)
        except nats.errors.NoRespondersError:
            raise NoResponderError(subject) from None
        except nats.errors.TimeoutError:
            raise TimeoutError(subject) from None
        except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError, OSError) as exc:
            raise BusUnavailableError(f"NATS at {self.url} is unreachable ({type(exc).__name__})") from None
        return json.loads(msg.data)  # type: ignore[no-any-return]

    @staticmethod
    async def respond(msg: Msg, body: dict[str, Any]) -> None:
        """Reply to a request message with a JSON body (a lost reply is logged, not raised)."""
        try:
            await msg.respond(dumps(body).encode())
        except Exception as exc:
            log.warning("NATS reply dropped: %s", exc)
