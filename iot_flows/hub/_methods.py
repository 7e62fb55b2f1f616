"""Direct methods: send a request to a device and wait for its reply, correlated by ``$rid``.

docs/iothub-reference.md §5 and §8 #1-2: the hub's answer is HTTP 200 with the device's
own status and payload (device outcomes are data); 404103 when the device is not
connected and subscribed within ``connectTimeoutInSeconds``; 504101 when it does not
answer within ``responseTimeoutInSeconds``. Requests go out at QoS 0 and are never
queued for later.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from iot_flows._exceptions import (
    BadRequestError,
    DeviceNotOnlineError,
    GatewayTimeoutError,
    PayloadTooLargeError,
    ServiceUnavailableError,
)
from iot_flows._json import dumps, loads
from iot_flows._types import MethodResult
from iot_flows.hub._sessions import DeviceLink, SessionRegistry, Subscription

__all__ = ["MethodCall", "MethodInvoker", "MethodResult", "RawReply", "decode_reply", "parse_method_call"]

MAX_PAYLOAD_BYTES = 128 * 1024
#: Response timeouts are checked in buckets of this many seconds (one timer per bucket,
#: not one per call): a call times out at most this much after its
#: ``responseTimeoutInSeconds``.
TIMEOUT_GRAIN = 0.05
_NAME_FORBIDDEN = set('$()<>@,;:\\"/[]?={} \t+#')


@dataclass(frozen=True, slots=True)
class MethodCall:
    """A validated ``CloudToDeviceMethod`` request."""

    method_name: str
    payload: Any
    response_timeout: int = 30
    connect_timeout: int = 0


def _bounded_int(body: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise BadRequestError(f"{name} must be an integer.")
    if not low <= value <= high:
        raise BadRequestError(f"{name} must be within [{low}; {high}], got {value}.")
    return int(value)


def parse_method_call(body: Any) -> MethodCall:
    """Validate a ``CloudToDeviceMethod`` body (timeouts 5-300 and 0-300, payload <= 128 KB)."""
    if not isinstance(body, dict):
        raise BadRequestError("The method body must be a JSON object.")
    name = body.get("methodName")
    if (
        not isinstance(name, str)
        or not name
        or not (name.isascii() and name.isprintable())  # docs/iothub-reference.md §5: US-ASCII printable only
        or any(ch in _NAME_FORBIDDEN for ch in name)
    ):
        raise BadRequestError("methodName must be non-empty printable US-ASCII without $()<>@,;:\\\"/[]?={} or spaces.")
    payload = body.get("payload")
    if len(dumps(payload).encode()) > MAX_PAYLOAD_BYTES:  # bytes on the wire, not characters
        raise PayloadTooLargeError(f"Method payload is over {MAX_PAYLOAD_BYTES} bytes.")
    return MethodCall(
        method_name=name,
        payload=payload,
        response_timeout=_bounded_int(body, "responseTimeoutInSeconds", 30, 5, 300),
        connect_timeout=_bounded_int(body, "connectTimeoutInSeconds", 0, 0, 300),
    )


#: A device's answer as it arrived: (status, payload bytes), see :meth:`MethodInvoker.start`.
RawReply = tuple[int, bytes]


def decode_reply(payload: bytes) -> Any:
    """A method reply's payload as the REST answer relays it: JSON, None when empty, else text."""
    if not payload.strip():
        return None
    try:
        return loads(payload)  # strict: NaN/Infinity are not JSON, relayed as text like any other
    except ValueError:
        return payload.decode("utf-8", "replace")  # a non-JSON reply is relayed as text


class MethodInvoker:
    """Sends method requests and resolves them with the devices' replies.

    Hot path (a job calls this once per device): the request payload is encoded once per
    payload object, and response timeouts share one timer per :data:`TIMEOUT_GRAIN`
    bucket instead of an ``asyncio.wait_for`` (a timer and a waiter) per call.
    """

    def __init__(self, sessions: SessionRegistry) -> None:
        self._sessions = sessions
        #: rid -> (device id, future, raw): a raw future gets a RawReply, else a MethodResult.
        #: rids are unique per hub process.
        self._pending: dict[str, tuple[str, asyncio.Future[Any], bool]] = {}
        self._ids = itertools.count(1)
        self._expiry: dict[int, list[str]] = {}
        self._encoded: tuple[Any, bytes] = (object(), b"")
        #: Set by a cluster node: routes each call to the node holding the device.
        self.router: Callable[[str, MethodCall], Awaitable[MethodResult]] | None = None

    @property
    def pending_count(self) -> int:
        """Method requests sent and not yet answered or timed out."""
        return len(self._pending)

    async def invoke(self, device_id: str, call: MethodCall) -> MethodResult:
        """Invoke ``call`` on ``device_id``; raise 404103 / 504101 as IoT Hub does."""
        if self.router is not None:
            return await self.router(device_id, call)
        return await self.invoke_local(device_id, call)

    def _payload(self, payload: Any) -> bytes:
        cached = self._encoded
        if cached[0] is not payload:  # identity: the cache holds a reference, ids cannot recycle
            cached = self._encoded = (payload, dumps(payload).encode())
        return cached[1]

    async def invoke_local(self, device_id: str, call: MethodCall) -> MethodResult:
        """Invoke ``call`` through this process's connection to the device (404103 if none)."""
        link = self._sessions.subscribed_link(device_id, Subscription.METHODS)
        if link is None and call.connect_timeout > 0:
            link = await self._sessions.wait_for(device_id, Subscription.METHODS, call.connect_timeout)
        if link is None:
            info = {"timeout": _hms(call.connect_timeout)} if call.connect_timeout else {}
            raise DeviceNotOnlineError(
                "Timed out waiting for device to connect." if call.connect_timeout else "Device is not online.",
                info=info,
            )
        rid, future = self._send(link, device_id, call, False)
        try:
            return await future  # type: ignore[no-any-return]
        finally:
            self._pending.pop(rid, None)

    def start(self, device_id: str, call: MethodCall) -> asyncio.Future[RawReply] | None:
        """Send ``call`` now when the device is subscribed to methods on this process; else None.

        The returned future ends with the device's answer as it arrived (:data:`RawReply`,
        undecoded: a job stores it, :func:`decode_reply` gives the REST form) or
        ``GatewayTimeoutError`` (504101) after ``responseTimeoutInSeconds``; cancelling it
        abandons the call. A job's hot path: no task and no coroutine per call. ``None``
        means the caller takes :meth:`invoke` (waiting for the device, another node).
        """
        link = self._sessions.subscribed_link(device_id, Subscription.METHODS)
        if link is None:
            return None
        return self._send(link, device_id, call, True)[1]

    def _send(self, link: DeviceLink, device_id: str, call: MethodCall, raw: bool) -> tuple[str, asyncio.Future[Any]]:
        rid = format(next(self._ids), "x")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending[rid] = (device_id, future, raw)
        bucket = math.ceil((loop.time() + call.response_timeout) / TIMEOUT_GRAIN)
        expiring = self._expiry.get(bucket)
        if expiring is None:
            expiring = self._expiry[bucket] = []
            loop.call_at(bucket * TIMEOUT_GRAIN, self._expire, bucket)
        expiring.append(rid)
        link.send(f"$iothub/methods/POST/{call.method_name}/?$rid={rid}", self._payload(call.payload), 0)
        return rid, future

    def shut_down(self) -> int:
        """Answer every direct method still waiting for its device with 503 (retryable): the
        hub is stopping and will not see the reply. A job's calls are left to the job engine
        (recorded ``HubRestarted`` on resume). Returns the number of calls answered."""
        answered = 0
        for rid, (_, future, raw) in list(self._pending.items()):
            if raw or future.done():
                continue
            del self._pending[rid]
            future.set_exception(ServiceUnavailableError("The hub is shutting down; the request may be retried."))
            answered += 1
        return answered

    def _expire(self, bucket: int) -> None:
        for rid in self._expiry.pop(bucket, ()):
            entry = self._pending.pop(rid, None)
            if entry is not None and not entry[1].done():
                entry[1].set_exception(GatewayTimeoutError("Timed out waiting for the response from device."))

    def resolve(self, device_id: str, rid: str, status: int, payload: bytes) -> bool:
        """Deliver a device's reply; False when no request with that ``$rid`` is pending.

        Only the device the request went to can answer it.
        """
        entry = self._pending.get(rid)
        if entry is None or entry[0] != device_id:
            return False
        del self._pending[rid]
        future = entry[1]
        if future.done():
            return False
        future.set_result((status, payload) if entry[2] else MethodResult(status=status, payload=decode_reply(payload)))
        return True


def _hms(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
