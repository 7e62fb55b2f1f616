"""Pure parsing of the IoT Hub topics a device publishes to (docs/iothub-reference.md §2.2).

::

    $iothub/twin/GET/?$rid={rid}
    $iothub/twin/PATCH/properties/reported/?$rid={rid}[&$version={reported $version}]
    $iothub/methods/res/{status}/?$rid={rid}
    devices/{deviceId}/messages/events/{property_bag}

Device ids are not URL-encoded in topics (docs/iothub-reference.md §1.5); query values are.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from enum import Enum

__all__ = ["DeviceTopic", "TopicKind", "parse_device_topic", "parse_method_response", "twin_response_topic"]


class TopicKind(str, Enum):
    """What a device publish asks the hub to do."""

    TWIN_GET = "twin_get"  #: read desired + reported
    TWIN_PATCH_REPORTED = "twin_patch_reported"  #: merge a reported patch
    METHOD_RESPONSE = "method_response"  #: reply to a direct method
    TELEMETRY = "telemetry"  #: device-to-cloud message


@dataclass(frozen=True, slots=True)
class DeviceTopic:
    """A parsed device publish topic."""

    kind: TopicKind
    rid: str | None = None
    status: int | None = None
    properties: str = ""
    #: ``$version`` on a reported PATCH: a precondition on the current reported version.
    version: str | None = None


#: Characters that make a query string need the full parser (separators, escapes).
_QUERY_SPECIAL = frozenset("&%+;")


def _query(topic: str, prefix: str) -> dict[str, str] | None:
    rest = topic[len(prefix) :]
    if not rest.startswith("?"):
        return None
    rid = _plain_rid(rest)
    if rid is not None:
        return {"$rid": rid}  # the common case, "?$rid={rid}", without a query parser
    return dict(urllib.parse.parse_qsl(rest[1:], keep_blank_values=True))


def _plain_rid(query: str) -> str | None:
    """``{rid}`` of a query that is exactly ``?$rid={rid}`` with nothing to decode, else None."""
    if query.startswith("?$rid=") and _QUERY_SPECIAL.isdisjoint(query):
        return query[6:]
    return None


def parse_device_topic(topic: str, device_id: str) -> DeviceTopic | None:
    """Parse a device's publish topic; None when the device may not publish there."""
    if topic.startswith("$iothub/twin/GET/"):
        query = _query(topic, "$iothub/twin/GET/")
        if query is None or "$rid" not in query:
            return None
        return DeviceTopic(TopicKind.TWIN_GET, rid=query["$rid"])
    if topic.startswith("$iothub/twin/PATCH/properties/reported/"):
        query = _query(topic, "$iothub/twin/PATCH/properties/reported/")
        if query is None or "$rid" not in query:
            return None
        return DeviceTopic(TopicKind.TWIN_PATCH_REPORTED, rid=query["$rid"], version=query.get("$version"))
    if topic.startswith("$iothub/methods/res/"):
        status_text, sep, rest = topic[len("$iothub/methods/res/") :].partition("/")
        if rest.startswith("?$rid=") and status_text.isascii() and status_text.isdigit() and _QUERY_SPECIAL.isdisjoint(
            rest
        ):  # the common case, "{status}/?$rid={rid}", without a query parser
            return DeviceTopic(TopicKind.METHOD_RESPONSE, rid=rest[6:], status=int(status_text))
        if not sep or not rest.startswith("?"):
            return None
        try:
            status = int(urllib.parse.unquote(status_text))
        except ValueError:
            return None
        query = dict(urllib.parse.parse_qsl(rest[1:], keep_blank_values=True))
        if "$rid" not in query:
            return None
        return DeviceTopic(TopicKind.METHOD_RESPONSE, rid=query["$rid"], status=status)
    events = f"devices/{device_id}/messages/events/"
    if topic.startswith(events) or topic == events[:-1]:
        return DeviceTopic(TopicKind.TELEMETRY, properties=topic[len(events) :])
    return None


def parse_method_response(topic: str) -> tuple[int, str] | None:
    """``(status, rid)`` of ``$iothub/methods/res/{status}/?$rid={rid}``; None when the topic is
    not a method response, or not in that plain form (then :func:`parse_device_topic` decides).

    A job's hot path: one call per device answer, without building a :class:`DeviceTopic`.
    """
    if not topic.startswith("$iothub/methods/res/"):
        return None
    status_text, _, rest = topic[20:].partition("/")
    rid = _plain_rid(rest)
    if rid is not None and status_text.isascii() and status_text.isdigit():
        return int(status_text), rid
    return None


def twin_response_topic(status: int, rid: str, version: int | None = None) -> str:
    """``$iothub/twin/res/{status}/?$rid={rid}[&$version={version}]``."""
    topic = f"$iothub/twin/res/{status}/?$rid={urllib.parse.quote(rid, safe='')}"
    if version is not None:
        topic += f"&$version={version}"
    return topic
