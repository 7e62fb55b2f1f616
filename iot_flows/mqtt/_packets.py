"""MQTT 3.1.1 control packets as plain immutable values.

Each packet is a frozen, slotted dataclass: cheap to build on the decode hot path,
hashable, and comparable with ``==`` (which is what the round-trip tests rely on).
The classes hold data only; all wire-format rules live in :mod:`iot_flows.mqtt._codec`,
which validates on both encode and decode. Quality-of-service levels are plain ints
(0, 1, 2) and packet identifiers are ints in 1..65535.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CONNACK_ACCEPTED",
    "CONNACK_BAD_CREDENTIALS",
    "CONNACK_IDENTIFIER_REJECTED",
    "CONNACK_NOT_AUTHORIZED",
    "CONNACK_SERVER_UNAVAILABLE",
    "CONNACK_UNACCEPTABLE_PROTOCOL",
    "Connack",
    "Connect",
    "Disconnect",
    "Packet",
    "Pingreq",
    "Pingresp",
    "Puback",
    "Pubcomp",
    "Publish",
    "Pubrec",
    "Pubrel",
    "SUBACK_FAILURE",
    "Suback",
    "Subscribe",
    "Unsuback",
    "Unsubscribe",
]

#: CONNACK return codes (MQTT 3.1.1 §3.2.2.3).
CONNACK_ACCEPTED = 0
CONNACK_UNACCEPTABLE_PROTOCOL = 1
CONNACK_IDENTIFIER_REJECTED = 2
CONNACK_SERVER_UNAVAILABLE = 3
CONNACK_BAD_CREDENTIALS = 4
CONNACK_NOT_AUTHORIZED = 5

#: SUBACK return code for a refused subscription (MQTT 3.1.1 §3.9.3); granted QoS is 0, 1 or 2.
SUBACK_FAILURE = 0x80


@dataclass(frozen=True, slots=True)
class Connect:
    """CONNECT (client -> server).

    ``protocol_name``/``protocol_level`` are decoded even when unsupported so the server
    can answer CONNACK 1 (MQTT 3.1.1 is ("MQTT", 4); MQTT 3.1 is ("MQIsdp", 3)). Levels 3
    and 4 are parsed in full whatever the name; for any other level the rest of the packet
    is *not* parsed (its layout differs, e.g. MQTT 5 properties) and every other field
    keeps its default, so a server must check the level before trusting the fields.
    """

    client_id: str
    username: str | None = None
    password: bytes | None = None
    clean_session: bool = True
    keep_alive: int = 0
    will_topic: str | None = None
    will_payload: bytes | None = None
    will_qos: int = 0
    will_retain: bool = False
    protocol_name: str = "MQTT"
    protocol_level: int = 4


@dataclass(frozen=True, slots=True)
class Connack:
    """CONNACK (server -> client); ``return_code`` is one of the ``CONNACK_*`` codes."""

    session_present: bool = False
    return_code: int = CONNACK_ACCEPTED


@dataclass(frozen=True, slots=True)
class Publish:
    """PUBLISH (both directions). ``packet_id`` is None exactly when ``qos`` is 0."""

    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None


@dataclass(frozen=True, slots=True)
class Puback:
    """PUBACK: acknowledges a QoS 1 PUBLISH."""

    packet_id: int


@dataclass(frozen=True, slots=True)
class Pubrec:
    """PUBREC: first answer to a QoS 2 PUBLISH."""

    packet_id: int


@dataclass(frozen=True, slots=True)
class Pubrel:
    """PUBREL: second step of the QoS 2 flow."""

    packet_id: int


@dataclass(frozen=True, slots=True)
class Pubcomp:
    """PUBCOMP: last step of the QoS 2 flow."""

    packet_id: int


@dataclass(frozen=True, slots=True)
class Subscribe:
    """SUBSCRIBE: ``topics`` is a non-empty tuple of ``(topic_filter, requested_qos)``."""

    packet_id: int
    topics: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Suback:
    """SUBACK: one return code (granted QoS or ``SUBACK_FAILURE``) per requested filter."""

    packet_id: int
    return_codes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """UNSUBSCRIBE: a non-empty tuple of topic filters."""

    packet_id: int
    filters: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Unsuback:
    """UNSUBACK: acknowledges an UNSUBSCRIBE."""

    packet_id: int


@dataclass(frozen=True, slots=True)
class Pingreq:
    """PINGREQ (client -> server keep-alive)."""


@dataclass(frozen=True, slots=True)
class Pingresp:
    """PINGRESP (server -> client)."""


@dataclass(frozen=True, slots=True)
class Disconnect:
    """DISCONNECT: clean client shutdown (the will message is discarded)."""


Packet = (
    Connect
    | Connack
    | Publish
    | Puback
    | Pubrec
    | Pubrel
    | Pubcomp
    | Subscribe
    | Suback
    | Unsubscribe
    | Unsuback
    | Pingreq
    | Pingresp
    | Disconnect
)
"""Any MQTT 3.1.1 control packet."""
