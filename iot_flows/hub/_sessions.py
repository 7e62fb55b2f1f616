"""Which connection holds device X, and what each device has subscribed to.

This is the seam between the device protocol core and its transports: a transport
(the built-in MQTT endpoint, or later a broker-fronted client) registers a
:class:`DeviceLink` per authenticated device; the core sends through it by device id.
Subscriptions belong to the device's *session*, not to the TCP connection: with
``clean_session=0`` (what every Azure SDK sends) they survive reconnects, because the
Node SDK never re-subscribes after a reconnect (docs/iothub-reference.md §9.2).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from iot_flows._tasks import BackgroundTasks

__all__ = ["DeviceLink", "SessionRegistry", "SessionStore", "Subscription"]


class Subscription(str, Enum):
    """The IoT Hub topic filters a device may subscribe to."""

    TWIN_RESPONSES = "$iothub/twin/res/#"  #: twin GET/PATCH responses
    DESIRED = "$iothub/twin/PATCH/properties/desired/#"  #: desired-property notifications
    METHODS = "$iothub/methods/POST/#"  #: direct-method requests
    C2D = "devices/{device_id}/messages/devicebound/#"  #: cloud-to-device messages

    @classmethod
    def parse(cls, topic_filter: str, device_id: str) -> Subscription | None:
        """The subscription a filter names for ``device_id``, or None if not allowed."""
        for sub in cls:
            if topic_filter == sub.value.format(device_id=device_id):
                return sub
        return None


class DeviceLink(Protocol):
    """One authenticated device connection, whatever carries it."""

    device_id: str

    def send(self, topic: str, payload: bytes, qos: int = 0) -> None:
        """Queue a publish to the device (never blocks)."""

    def close(self, reason: str) -> None:
        """Drop the connection (e.g. taken over by a newer one)."""


@dataclass
class _Session:
    subscriptions: set[Subscription] = field(default_factory=set)
    link: DeviceLink | None = None
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    #: False until the stored session was loaded (first connection since hub start).
    restored: bool = False


class SessionStore(Protocol):
    """Where persistent sessions outlive the hub process."""

    async def get_subscriptions(self, device_id: str) -> list[str]:
        """The topic filters stored for the device's persistent session."""

    async def set_subscriptions(self, device_id: str, filters: list[str]) -> None:
        """Replace the stored topic filters of the device's persistent session."""


class SessionRegistry:
    """Live links and persistent subscriptions per device id (single event loop).

    ``on_state_change(device_id, connected)`` is awaited by :meth:`attach` (so CONNACK
    follows the stored state) and scheduled as a task by :meth:`detach`.
    """

    def __init__(
        self,
        on_state_change: Callable[[str, bool], Coroutine[Any, Any, None]] | None = None,
        persistence: SessionStore | None = None,
    ) -> None:
        self._sessions: dict[str, _Session] = {}
        self._on_state_change = on_state_change
        self._persistence = persistence
        self._background = BackgroundTasks("sessions")

    def __len__(self) -> int:
        return sum(1 for s in self._sessions.values() if s.link is not None)

    async def attach(self, link: DeviceLink, *, clean_session: bool, stored_filters: list[str] | None = None) -> bool:
        """Make ``link`` the device's connection; return True if a session was resumed.

        One connection per identity: an existing link is closed (IoT Hub logs
        400027 ConnectionForcefullyClosedOnNewConnection). ``stored_filters``: the stored
        session as the caller already read it with the device's record (None: read it here).
        """
        session = self._sessions.setdefault(link.device_id, _Session())
        if not session.restored:
            stored: list[str] = []
            if not clean_session and self._persistence is not None and stored_filters is not None:
                stored = stored_filters
            elif not clean_session and self._persistence is not None:
                # First connection since the hub started: restore the stored session.
                stored = await self._persistence.get_subscriptions(link.device_id)
                session = self._sessions.setdefault(link.device_id, session)
            session.restored = True
            if stored:
                for topic_filter in stored:
                    sub = Subscription.parse(topic_filter, link.device_id)
                    if sub is not None:
                        session.subscriptions.add(sub)
        resumed = not clean_session and bool(session.subscriptions)
        old = session.link
        session.link = link
        if old is not None and old is not link:
            old.close("400027 ConnectionForcefullyClosedOnNewConnection")
        if clean_session and session.subscriptions:
            session.subscriptions.clear()
            await self._persist(link.device_id, session)
        if self._on_state_change is not None:
            await self._on_state_change(link.device_id, True)
        self._wake(session)
        return resumed

    def detach(self, link: DeviceLink) -> None:
        """Forget ``link`` if it is still the device's current connection."""
        session = self._sessions.get(link.device_id)
        if session is None or session.link is not link:
            return
        session.link = None
        if self._on_state_change is not None:
            self._background.spawn(self._on_state_change(link.device_id, False), name=f"detach-{link.device_id}")

    async def close(self, grace: float = 2.0) -> None:
        """Let pending disconnect notifications finish (up to ``grace`` s), then cancel the rest."""
        await self._background.close(grace)

    def forget(self, device_id: str) -> None:
        """Drop a device's session entirely (device deleted or disabled)."""
        session = self._sessions.pop(device_id, None)
        if session is not None and session.link is not None:
            session.link.close("device removed")

    def release(self, device_id: str, reason: str) -> None:
        """The device connected to another hub node: close the link here, and reload the
        stored session on its next connection here (the other node may change it)."""
        session = self._sessions.get(device_id)
        if session is None:
            return
        session.restored = False
        session.subscriptions.clear()
        if session.link is not None:
            session.link.close(reason)

    async def subscribe(self, device_id: str, subscription: Subscription) -> None:
        """Record a SUBSCRIBE (persisted for non-clean sessions) and wake waiters."""
        await self.subscribe_many(device_id, (subscription,))

    async def subscribe_many(self, device_id: str, subscriptions: Iterable[Subscription]) -> None:
        """Add the filters of one SUBSCRIBE packet; the session is stored once, not per filter."""
        session = self._sessions.setdefault(device_id, _Session())
        new = [s for s in subscriptions if s not in session.subscriptions]
        if new:
            session.subscriptions.update(new)
            await self._persist(device_id, session)
        self._wake(session)

    async def unsubscribe(self, device_id: str, subscription: Subscription) -> None:
        """Record an UNSUBSCRIBE (persisted)."""
        session = self._sessions.get(device_id)
        if session is not None and subscription in session.subscriptions:
            session.subscriptions.discard(subscription)
            await self._persist(device_id, session)

    async def _persist(self, device_id: str, session: _Session) -> None:
        if self._persistence is not None:
            await self._persistence.set_subscriptions(
                device_id, [s.value.format(device_id=device_id) for s in session.subscriptions]
            )

    def link(self, device_id: str) -> DeviceLink | None:
        """The device's current connection, or None when offline."""
        session = self._sessions.get(device_id)
        return session.link if session is not None else None

    def is_connected(self, device_id: str) -> bool:
        """True when the device has a connection to this hub."""
        return self.link(device_id) is not None

    def subscribed_link(self, device_id: str, subscription: Subscription) -> DeviceLink | None:
        """The device's link if it is connected and subscribed to ``subscription``."""
        session = self._sessions.get(device_id)
        if session is None or session.link is None or subscription not in session.subscriptions:
            return None
        return session.link

    async def wait_for(self, device_id: str, subscription: Subscription, timeout: float) -> DeviceLink | None:
        """Wait up to ``timeout`` s until the device is connected and subscribed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            link = self.subscribed_link(device_id, subscription)
            if link is not None:
                return link
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            session = self._sessions.setdefault(device_id, _Session())
            waiter: asyncio.Future[None] = loop.create_future()
            session.waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                return self.subscribed_link(device_id, subscription)
            finally:
                if waiter in session.waiters:
                    session.waiters.remove(waiter)

    def connected_ids(self) -> list[str]:
        """Ids of every device connected to this hub."""
        return [d for d, s in self._sessions.items() if s.link is not None]

    @staticmethod
    def _wake(session: _Session) -> None:
        waiters, session.waiters = session.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
