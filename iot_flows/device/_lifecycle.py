"""The connection lifecycle of a :class:`DeviceClient`: every state and transition in one table.

As h11's ``_state.py`` and our ``jobs/_states.py``: the client never checks flags to
find out where it is; it fires an :class:`Event` and :data:`TRANSITIONS` says which
:class:`State` follows. A pair missing from the table is a bug in the client and
raises :class:`IllegalTransition`.

The usual path: ``DISCONNECTED -CONNECT-> CONNECTING -ESTABLISHED-> READY``; then
``READY -RENEW-> RENEWING -ESTABLISHED-> READY`` before every token expiry, and
``READY -RETRY-> RECONNECTING -ESTABLISHED-> READY`` after a drop.

``READY`` and ``RENEWING`` are *online*: connection listeners are told only when a
transition crosses that line, so a token renewal is invisible to them (the device stays
logically connected). Requests go out only in ``READY``; in ``CONNECTING``,
``RECONNECTING`` and ``RENEWING`` they wait; in ``FAILED`` they raise the refusal and in
``DISCONNECTED`` they raise :class:`~iot_flows.ConnectionLostError`.

Failures (a refused or failed CONNECT, SUBSCRIBE or twin GET, a dropped connection, a
failed token renewal) all take one path in the client, which maps the exception to an
event: :class:`~iot_flows.UnauthorizedError` (CONNACK 4/5) -> ``REFUSED`` (no retry:
retrying bad credentials only hammers the hub); anything else -> ``RETRY`` when the
client may retry (``connect(retry=True)``, or ``auto_reconnect`` once it was online),
else ``GIVE_UP``.
"""

from __future__ import annotations

import enum

__all__ = ["ESTABLISHING", "ONLINE", "TRANSITIONS", "Event", "IllegalTransition", "Lifecycle", "State"]


class State(enum.Enum):
    """Where a device client's connection is."""

    DISCONNECTED = "disconnected"  #: never connected, or disconnect() / gave up
    CONNECTING = "connecting"  #: connect() is establishing the first connection
    READY = "ready"  #: connected, subscribed, twin reconciled: requests go out
    RENEWING = "renewing"  #: reconnecting with a fresh SAS token (still online)
    RECONNECTING = "reconnecting"  #: the connection dropped; retrying with backoff
    FAILED = "failed"  #: the hub refused the credentials; no more attempts


class Event(enum.Enum):
    """What happened to a device client's connection."""

    CONNECT = "connect"  #: connect() was called
    ESTABLISHED = "established"  #: CONNECT, SUBSCRIBE and twin GET succeeded
    RENEW = "renew"  #: the SAS token is about to expire
    RETRY = "retry"  #: a transient failure, and the client may retry
    GIVE_UP = "give_up"  #: a transient failure, and the client may not retry
    REFUSED = "refused"  #: the hub refused the credentials (CONNACK 4 or 5)
    CLOSE = "close"  #: disconnect() was called


S, E = State, Event

#: (state, event) -> next state. Everything the client can do, in one place.
TRANSITIONS: dict[tuple[State, Event], State] = {
    (S.DISCONNECTED, E.CONNECT): S.CONNECTING,
    (S.CONNECTING, E.ESTABLISHED): S.READY,
    (S.CONNECTING, E.RETRY): S.CONNECTING,  # connect(retry=True): next attempt after backoff
    (S.CONNECTING, E.GIVE_UP): S.DISCONNECTED,  # connect() raises the error
    (S.CONNECTING, E.REFUSED): S.FAILED,
    (S.CONNECTING, E.CLOSE): S.DISCONNECTED,
    (S.READY, E.RENEW): S.RENEWING,
    (S.READY, E.RETRY): S.RECONNECTING,  # dropped, auto_reconnect
    (S.READY, E.GIVE_UP): S.DISCONNECTED,  # dropped, no auto_reconnect
    (S.READY, E.CLOSE): S.DISCONNECTED,
    (S.RENEWING, E.ESTABLISHED): S.READY,
    (S.RENEWING, E.RETRY): S.RECONNECTING,  # renewal failed: reconnect with backoff
    (S.RENEWING, E.GIVE_UP): S.DISCONNECTED,
    (S.RENEWING, E.REFUSED): S.FAILED,
    (S.RENEWING, E.CLOSE): S.DISCONNECTED,
    (S.RECONNECTING, E.ESTABLISHED): S.READY,
    (S.RECONNECTING, E.RETRY): S.RECONNECTING,  # next attempt after backoff
    (S.RECONNECTING, E.REFUSED): S.FAILED,
    (S.RECONNECTING, E.CLOSE): S.DISCONNECTED,
    (S.FAILED, E.CONNECT): S.CONNECTING,  # an explicit connect() tries again
    (S.FAILED, E.CLOSE): S.DISCONNECTED,
}

#: States in which the device counts as connected (``DeviceClient.connected``).
ONLINE = frozenset({S.READY, S.RENEWING})
#: States in which an establishing task is running and requests wait for its outcome.
ESTABLISHING = frozenset({S.CONNECTING, S.RENEWING, S.RECONNECTING})

del S, E


class IllegalTransition(RuntimeError):
    """Raised when an event is fired in a state the table has no transition for (a bug)."""


class Lifecycle:
    """The current :class:`State` of one client and the only way to change it."""

    __slots__ = ("state",)

    def __init__(self, state: State = State.DISCONNECTED) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<Lifecycle {self.state.value}>"

    def can(self, event: Event) -> bool:
        """True when ``event`` is allowed in the current state."""
        return (self.state, event) in TRANSITIONS

    def fire(self, event: Event) -> State:
        """Move to the state the table gives for ``event``; return it.

        Raises :class:`IllegalTransition` when the table has no such transition.
        """
        try:
            self.state = TRANSITIONS[(self.state, event)]
        except KeyError:
            raise IllegalTransition(f"{event.value!r} is not allowed in state {self.state.value!r}") from None
        return self.state
