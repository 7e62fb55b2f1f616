"""MQTT 3.1.1 for the bundled hub: a sans-IO codec (bytes in, packets out).

See :mod:`iot_flows.mqtt._codec` for the wire rules and :mod:`iot_flows.mqtt._packets`
for the packet values.
"""

from ._codec import DEFAULT_MAX_PACKET_SIZE, MqttCodecError, PacketReader, decode_one, encode, encode_publish
from ._packets import (
    CONNACK_ACCEPTED,
    CONNACK_BAD_CREDENTIALS,
    CONNACK_IDENTIFIER_REJECTED,
    CONNACK_NOT_AUTHORIZED,
    CONNACK_SERVER_UNAVAILABLE,
    CONNACK_UNACCEPTABLE_PROTOCOL,
    SUBACK_FAILURE,
    Connack,
    Connect,
    Disconnect,
    Packet,
    Pingreq,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
)

__all__ = [
    "CONNACK_ACCEPTED",
    "CONNACK_BAD_CREDENTIALS",
    "CONNACK_IDENTIFIER_REJECTED",
    "CONNACK_NOT_AUTHORIZED",
    "CONNACK_SERVER_UNAVAILABLE",
    "CONNACK_UNACCEPTABLE_PROTOCOL",
    "Connack",
    "Connect",
    "DEFAULT_MAX_PACKET_SIZE",
    "Disconnect",
    "MqttCodecError",
    "Packet",
    "PacketReader",
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
    "decode_one",
    "encode",
    "encode_publish",
]
