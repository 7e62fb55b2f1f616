"""The transport-independent device protocol core.

Consumes ``(link, topic, payload)`` from an authenticated device and answers through
the same link: twin GET and reported PATCH, direct-method replies, telemetry. It knows
nothing about sockets, so a broker-fronted transport can feed it the same events
(docs/architecture.md §1).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from iot_flows._exceptions import BadRequestError, HubError
from iot_flows._json import dumps, loads
from iot_flows.hub._methods import MethodInvoker
from iot_flows.hub._sessions import DeviceLink, SessionRegistry, Subscription
from iot_flows.hub._topics import TopicKind, parse_device_topic, parse_method_response, twin_response_topic
from iot_flows.hub._twins import TwinService
from iot_flows.store import storage_unavailable
from iot_flows.twin import TwinTooLargeError

__all__ = ["DeviceEndpoint"]

log = logging.getLogger(__name__)
#: Called with (device_id, property_bag, payload) for each telemetry message.
TelemetrySink = Callable[[str, str, bytes], None]


def _error_body(exc: HubError) -> bytes:
    return dumps({"errorCode": exc.error_code, "message": exc.message}).encode()


class DeviceEndpoint:
    """Handles what devices publish; one instance per hub."""

    def __init__(
        self,
        twins: TwinService,
        methods: MethodInvoker,
        sessions: SessionRegistry,
        telemetry_sink: TelemetrySink | None = None,
    ) -> None:
        self._twins = twins
        self._methods = methods
        self._sessions = sessions
        self._telemetry_sink = telemetry_sink
        self.telemetry_count = 0

    async def handle_publish(self, link: DeviceLink, topic: str, payload: bytes) -> bool:
        """Process one publish; return False when the topic is not one the device may use.

        The caller acknowledges a QoS 1 publish only after this returns True, so a
        PUBACK (and the 204 twin response) always follows the committed write.
        """
        parsed = parse_device_topic(topic, link.device_id)
        if parsed is None:
            return False
        if parsed.kind is TopicKind.TELEMETRY:
            self.telemetry_count += 1
            if self._telemetry_sink is not None:
                self._telemetry_sink(link.device_id, parsed.properties, payload)
            return True
        if parsed.kind is TopicKind.METHOD_RESPONSE:
            assert parsed.rid is not None and parsed.status is not None
            self._methods.resolve(link.device_id, parsed.rid, parsed.status, payload)
            return True
        assert parsed.rid is not None
        status, version, body = await self._twin_request(link.device_id, parsed.kind, payload, parsed.version)
        if self._sessions.subscribed_link(link.device_id, Subscription.TWIN_RESPONSES) is link:
            link.send(twin_response_topic(status, parsed.rid, version), body, 0)
        return True

    def handle_method_response(self, link: DeviceLink, topic: str, payload: bytes) -> bool:
        """Resolve a direct-method reply without awaiting (the MQTT server's fast path).

        Returns False when ``topic`` is not a method response this device may publish.
        """
        plain = parse_method_response(topic)
        if plain is not None:
            self._methods.resolve(link.device_id, plain[1], plain[0], payload)
            return True
        parsed = parse_device_topic(topic, link.device_id)
        if parsed is None or parsed.kind is not TopicKind.METHOD_RESPONSE:
            return False
        assert parsed.rid is not None and parsed.status is not None
        self._methods.resolve(link.device_id, parsed.rid, parsed.status, payload)
        return True

    async def _twin_request(
        self, device_id: str, kind: TopicKind, payload: bytes, if_version: str | None = None
    ) -> tuple[int, int | None, bytes]:
        try:
            if kind is TopicKind.TWIN_GET:
                return 200, None, dumps(await self._twins.device_view(device_id)).encode()
            patch = _parse_json(payload)
            version = await self._twins.report(device_id, patch, if_version=_parse_version(if_version))
            return 204, version, b""
        except TwinTooLargeError as exc:
            return 413, None, _error_body(exc)
        except HubError as exc:
            return exc.status_code, None, _error_body(exc)
        except Exception as exc:  # the hub must answer, never crash, on any device input
            unavailable = storage_unavailable(exc)  # locked database, full disk: 503, retryable
            if unavailable is not None:
                log.warning("twin request from %s: %s", device_id, exc)
                return 503, None, _error_body(unavailable)
            log.exception("twin request from %s failed", device_id)
            return 500, None, dumps({"errorCode": 500001, "message": "internal error"}).encode()


def _parse_json(payload: bytes) -> Any:
    try:
        return loads(payload)
    except ValueError:
        raise BadRequestError("Malformed JSON in reported properties patch.", error_code=400006) from None


def _parse_version(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise BadRequestError(f"$version must be an integer, got {text!r}.") from None
