"""Values a :class:`DeviceClient` hands out and takes in: twins, desired updates, method calls.

Topic and payload shapes follow docs/iothub-reference.md §2 (device MQTT dialect): twin responses on
``$iothub/twin/res/{status}/?$rid={rid}[&$version={v}]``, direct methods on
``$iothub/methods/POST/{name}/?$rid={rid}``, replies on
``$iothub/methods/res/{status}/?$rid={rid}``.
"""

from __future__ import annotations

import asyncio
import json
import random
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from iot_flows._exceptions import HubError, RequestTimeoutError, error_for_status
from iot_flows._json import dumps

__all__ = [
    "Backoff",
    "ConnectionListener",
    "DesiredHandler",
    "DesiredUpdate",
    "DeviceTwin",
    "MethodHandler",
    "MethodRequest",
    "MethodResponse",
    "MethodResult",
    "coerce_method_result",
    "deadline",
    "dumps",
    "parse_query",
    "twin_error",
]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnect delays: ``initial * multiplier**attempt`` seconds capped at ``maximum``,
    times a random factor in ``[1 - jitter, 1 + jitter]`` so a fleet does not reconnect
    in step (the retry policy of the Azure device SDKs: exponential backoff with jitter)."""

    initial: float = 0.5
    maximum: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before attempt number ``attempt`` (0-based); never negative."""
        base = min(self.maximum, self.initial * self.multiplier ** min(attempt, 32))
        u = (rng or random).random()
        return max(0.0, base * (1.0 + self.jitter * (2.0 * u - 1.0)))


@dataclass(frozen=True, slots=True)
class DeviceTwin:
    """What a device sees of its twin (docs/iothub-reference.md §1.3): the ``desired`` and ``reported``
    documents, each with its ``$version`` (no tags: devices cannot read them)."""

    desired: dict[str, Any]
    reported: dict[str, Any]

    @property
    def desired_version(self) -> int:
        """``desired.$version`` (0 when absent)."""
        return int(self.desired.get("$version", 0))

    @property
    def reported_version(self) -> int:
        """``reported.$version`` (0 when absent)."""
        return int(self.reported.get("$version", 0))


@dataclass(frozen=True, slots=True)
class DesiredUpdate:
    """A desired-property change handed to the desired handler.

    ``complete`` is True for the full desired document (after a (re)connect, with
    ``reported`` holding the reported document fetched with it) and False for a patch
    (keys set to ``None`` were removed). ``properties`` never contains ``$version``;
    ``version`` is the desired ``$version`` it brings the device to.
    """

    properties: dict[str, Any]
    version: int
    complete: bool
    reported: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class MethodRequest:
    """A direct-method call (docs/iothub-reference.md §2): ``name``, the service's JSON ``payload``
    parsed (``None`` for an empty body, the text for a body that is not JSON) and the
    request id ``rid`` the reply must carry."""

    name: str
    payload: Any
    rid: str


@dataclass(frozen=True, slots=True)
class MethodResponse:
    """A direct-method reply: the device's own ``status`` code (any int; the service
    returns it as ``status``) and a JSON-serialisable ``payload``."""

    status: int
    payload: Any = None


MethodResult = MethodResponse | tuple[int, Any] | int | None
MethodHandler = Callable[[MethodRequest], MethodResult | Awaitable[MethodResult]]
DesiredHandler = Callable[[DesiredUpdate], None | Awaitable[None]]
ConnectionListener = Callable[[bool], None]


def coerce_method_result(result: MethodResult) -> tuple[int, Any]:
    """``(status, payload)`` from what a method handler returned.

    Raises ``TypeError`` for anything but a :class:`MethodResponse`, a
    ``(status, payload)`` tuple, an int status or ``None`` (200, no payload).
    """
    if result is None:
        return 200, None
    if isinstance(result, MethodResponse):
        return result.status, result.payload
    if isinstance(result, int) and not isinstance(result, bool):
        return result, None
    if isinstance(result, tuple) and len(result) == 2:
        return int(result[0]), result[1]
    raise TypeError(f"a method handler returned {result!r}; expected MethodResponse, (status, payload) or int")


def twin_error(status: int, payload: bytes) -> HubError:
    """The :class:`HubError` for a twin response with an error ``status`` (docs/iothub-reference.md §2:
    the body is IoT Hub's error JSON, ``{"errorCode": 400027, "message": ...}``)."""
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


def parse_query(text: str) -> dict[str, str]:
    """The ``key=value&...`` tail of a topic as a dict (blank values kept)."""
    return dict(urllib.parse.parse_qsl(text, keep_blank_values=True))


class deadline:
    """``async with deadline(seconds, device_id, what):`` -- :func:`asyncio.timeout` that
    raises :class:`RequestTimeoutError` ("{device_id}: {what} within {seconds} s") when it
    passes, and also in place of any builtin ``TimeoutError`` raised inside."""

    __slots__ = ("_seconds", "_device_id", "_what", "_timeout")

    def __init__(self, seconds: float, device_id: str, what: str) -> None:
        self._seconds, self._device_id, self._what = seconds, device_id, what
        self._timeout = asyncio.timeout(seconds)

    async def __aenter__(self) -> None:
        await self._timeout.__aenter__()

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> bool | None:
        try:
            await self._timeout.__aexit__(exc_type, exc, tb)
        except TimeoutError as expired:  # this deadline passed
            exc = expired
        if isinstance(exc, TimeoutError) and not isinstance(exc, RequestTimeoutError):
            raise RequestTimeoutError(f"{self._device_id!r}: {self._what} within {self._seconds:g} s") from None
        return None
